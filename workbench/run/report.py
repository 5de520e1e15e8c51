"""The run report: every executed notebook as HTML, plus an ``index.html`` for the run.

All links in the report are relative to ``runs/<run_id>/report/``, so the folder reads the same
from a local disk, a static web server or an object store.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources

from workbench.config.parameters import changed_from_defaults
from workbench.errors import ReportError
from workbench.ml.evaluation import comparison
from workbench.ml.training.verdict import training_warnings
from workbench.storage.base import Store
from workbench.storage.catalog import (
    FIGURES,
    KEY_RESULTS,
    NOTEBOOKS,
    REPORT_INDEX,
    STEP_ORDER,
    Artifact,
    RunLayout,
    notebook,
    report_page,
)
from workbench.tracking.tracker import Tracker

NO_TEST_ROWS = "no score: the prepare step held out no test rows (data.test_fraction 0)"


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value):,}"
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"


# nbconvert's lab page loads require.js, MathJax and Mermaid from a CDN, which a report opened
# offline, behind a proxy or from a mail cannot reach; the steps' notebooks use none of them (no
# widgets, no math, no diagrams).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _notebook_html(source: bytes, uri: str) -> str:
    """The executed notebook as HTML that loads nothing from the internet; a truncated or foreign
    file is a one-line ReportError."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    try:
        node = nbformat.reads(source.decode(), as_version=4)
    except (ValueError, UnicodeDecodeError, nbformat.ValidationError) as exc:  # NotJSONError is a ValueError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ReportError(f"executed notebook {uri} is unreadable ({reason})") from exc
    loader = jinja2.DictLoader({"workbench-offline.html.j2": OFFLINE_TEMPLATE})
    exporter = HTMLExporter(template_name="lab", extra_loaders=[loader], template_file="workbench-offline.html.j2")
    body, _ = exporter.from_notebook_node(node)
    return body


class PagesAhead:
    """Report pages rendered in the background as each step ends, while the next one runs, so
    the report after the last step renders that step's page and the index only.

    A page is used only for the very bytes it was rendered from (those the store holds under
    the executed notebook's key); anything else is rendered as it always is.
    """

    def __init__(self) -> None:
        from nbconvert import HTMLExporter  # noqa: F401 - imported here, not in the worker beside papermill's client

        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report pages")
        self._pages: dict[str, tuple[bytes, Future[str]]] = {}

    def add(self, step: str, source: bytes, uri: str) -> None:
        self._pages[step] = (source, self._worker.submit(_notebook_html, source, uri))

    def page(self, step: str, source: bytes, uri: str) -> str:
        """The page of ``source``: rendered ahead, or now; a ReportError either way for a
        notebook that cannot be read."""
        ahead = self._pages.get(step)
        if ahead is not None and ahead[0] == source:
            return ahead[1].result()
        return _notebook_html(source, uri)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


# metrics that are yes/no answers, recorded as 1.0 and 0.0
FLAGS = {"parity_pass", "near_chance", "loses_to_baseline"}
FLAG_SUFFIXES = ("_loaded", "_dynamic_batch", "_as_exported_agrees")


def _shown(key: str, value: float) -> str:
    if key in FLAGS or key.endswith(FLAG_SUFFIXES):
        return "yes" if value == 1.0 else "no"
    return _fmt(value)


def _metric_groups(run: dict) -> list[tuple[str, list[tuple[str, str, bool]]]]:
    """The final metrics under the step that recorded them, in pipeline order: (step, [(key, shown,
    stale)])."""
    by_step: dict[str, list[tuple[str, str, bool]]] = {}
    for key, value in sorted(run["metrics"].items()):
        step = run["metric_steps"].get(key, "other")
        by_step.setdefault(step, []).append((key, _shown(key, value), key in run["stale_metrics"]))
    order = list(STEP_ORDER)
    return sorted(by_step.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))


def _test_line(line: str, stale: dict[str, str]) -> str:
    """The test-split comparison, marked when the step that measured it is stale."""
    steps = sorted({step for key, step in stale.items() if key.startswith(("test_", "baseline_test_", "chance_test_"))})
    return f"{line} (stale: {', '.join(steps)} must run again)" if steps else line


def _copy_page(store: Store, source: str, layout: RunLayout, page: Artifact) -> bool:
    """A reused step's page copied from the run it came from (its executed notebook is the same
    file), which spares rendering it again; False when that run has no such page."""
    origin = RunLayout(source).key(page)
    if not store.exists(origin):
        return False
    store.write_bytes(layout.key(page), store.read_bytes(origin))
    return True


def render_report(
    run_id: str,
    tracker: Tracker,
    store: Store,
    warn: Callable[[str], None] | None = None,
    pages: PagesAhead | None = None,
) -> str:
    """(Re)write the run's report from the store and the DB; returns the index URI.

    An executed notebook that cannot be read does not stop the report: the index links the raw
    file and says why, and ``warn`` hears of it. ``pages`` holds pages rendered while the run
    went on.
    """
    from jinja2 import Environment

    layout = RunLayout(run_id)
    run = tracker.get_run(run_id)
    present = set(store.list(layout.root))
    unreadable = []
    for step in run["steps"]:
        step["ipynb"] = step["html"] = None
        if step["name"] not in NOTEBOOKS:  # a step of an interactive run the catalog does not know
            continue
        executed = notebook(step["name"])
        key = layout.key(executed)
        if key in present:
            step["ipynb"] = f"../{executed.path}"
            html = report_page(step["name"])
            if step.get("reused_from") and _copy_page(store, step["reused_from"], layout, html):
                step["html"] = html.file  # the same notebook's page, as its run rendered it
                continue
            try:
                source, uri = store.read_bytes(key), store.uri(key)
                page = pages.page(step["name"], source, uri) if pages else _notebook_html(source, uri)
            except ReportError as exc:  # the index still links the raw notebook and says why
                unreadable.append(str(exc))
                if warn:
                    warn(str(exc))
                continue
            store.write_bytes(layout.key(html), page.encode())
            step["html"] = html.file
    for artifact in run["artifacts"]:
        artifact["href"] = "../" + layout.relative(artifact["key"])
        entry = layout.find(artifact["key"])
        artifact["description"] = entry.description if entry else ""
    metrics, stale = run["metrics"], run["stale_metrics"]
    verdict = None if "parity_pass" not in metrics else ("PASS" if metrics["parity_pass"] == 1 else "FAIL")
    badge = verdict
    if verdict and "parity_pass" in stale:  # a verdict on earlier weights is no verdict on these
        verdict, badge = f"stale (was {verdict})", "stale"
    cards = [
        (card.label, card.show(metrics[card.metric]), card.metric in stale)
        for card in KEY_RESULTS
        if card.metric in metrics
    ]
    # every figure the run wrote, in pipeline order, under its catalog title
    plots = [(figure.title, f"../{figure.path}") for figure in FIGURES if layout.key(figure) in present]
    warnings = [*unreadable]
    again = [step["name"] for step in run["steps"] if step["status"] == "stale"]
    if again:
        warnings.append(
            f"{', '.join(again)} must run again: what {'they' if len(again) > 1 else 'it'} made came from earlier "
            "inputs, and is marked stale below"
        )
    if metrics.get("near_chance") == 1.0:
        warnings.extend(training_warnings(metrics))
    held_out = comparison(metrics)  # "test ROC AUC 0.81; gradient boosting 0.84; chance 0.50"
    if held_out and held_out.warning:
        warnings.append(held_out.warning)
    test_line = (
        _test_line(held_out.line, stale) if held_out else NO_TEST_ROWS if metrics.get("rows_test") == 0 else None
    )
    template = (resources.files("workbench") / "templates" / "index.html.j2").read_text()
    page = (
        Environment(autoescape=True)
        .from_string(template)
        .render(
            run=run,
            verdict=verdict,
            badge=badge,
            cards=cards,
            test_line=test_line,
            plots=plots,
            warnings=warnings,
            fmt=_fmt,
            metric_groups=_metric_groups(run),
            changed=changed_from_defaults(run["parameters"]),  # listed first and marked
        )
    )
    return store.write_bytes(layout.key(REPORT_INDEX), page.encode()).uri
