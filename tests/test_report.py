"""The run report's index page, rendered from a tracking DB and a store without running a pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.runs import stale_notebook_run

from workbench.errors import ReportError
from workbench.run.report import PagesAhead, _notebook_html, render_report
from workbench.storage import open_store
from workbench.tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]


def test_parameters_changed_from_their_defaults_come_first_and_are_marked(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    store = open_store(str(tmp_path / "store"))
    values = {"train.lr": 0.01, "train.epochs": 30, "data.target": "<b>churned</b>", "seed": 0}
    origin = {"train.lr": "--set train.lr=0.01", "data.target": "churn.yaml", "train.epochs": "defaults"}
    run_id = tracker.create_run(store.root, values, origin)
    tracker.finish_run(run_id, "finished")

    render_report(run_id, tracker, store)
    page = (tmp_path / "store" / "runs" / run_id / "report" / "index.html").read_text()
    table = page[page.index("<h2>Parameters") :]
    rows = re.findall(r"<tr( class=\"changed\")?><td><code>([^<]+)</code>", table)
    assert [(bool(marked), key) for marked, key in rows] == [
        (True, "data.target"),
        (True, "train.lr"),
        (False, "seed"),
        (False, "train.epochs"),
    ]
    assert "2 changed from the default" in table and "--set train.lr=0.01" in table
    assert "&lt;b&gt;churned&lt;/b&gt;" in table  # a value is text, never markup


def test_a_stale_verdict_and_stale_results_are_marked_as_such(tmp_path):
    """After training ran again, the report shows no green parity PASS and no MXNet accuracy of the
    old weights as a current result beside the new validation accuracy."""
    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    store = open_store(str(tmp_path / "store"))
    stale_notebook_run(tracker, "again")

    render_report("again", tracker, store)
    page = (tmp_path / "store" / "runs" / "again" / "report" / "index.html").read_text()
    header = page[page.index("<header>") : page.index("</header>")]
    assert '<span class="badge stale">parity stale (was PASS)</span>' in header and "PASS</span>" not in header
    cards = dict(re.findall(r'<div class="label">([^<]+)</div><div class="value">([^<]+)</div>', page))
    assert cards["MXNet accuracy · stale"] == "91.00%" and cards["validation accuracy"] == "96.00%"
    assert "export, validate must run again: what they made came from earlier inputs" in page
    table = page[page.index("<h2>Metrics") :]
    assert re.search(r'<tr class="stale-result"><td><code>parity_pass</code> <span class="badge stale"', table)
    assert re.search(r"<tr><td><code>val_accuracy</code></td>", table)


def test_a_notebook_page_loads_nothing_from_the_internet():
    """The per-notebook pages open offline: nbconvert's lab page would load require.js and MathJax
    from a CDN."""
    page = _notebook_html((ROOT / "notebooks" / "02_train.ipynb").read_bytes(), "notebooks/02_train.ipynb")
    fetched = re.findall(r"""<(?:script|link|img)[^>]*(?:src|href)=["']?(?:https?:)?//[^>]*>""", page)
    assert fetched == [] and "cdnjs" not in page
    assert "train_model" in page  # the notebook itself is there


def test_the_metrics_table_groups_by_step_and_says_yes_or_no(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    store = open_store(str(tmp_path / "store"))
    run_id = tracker.create_run(store.root, {"seed": 0}, {"seed": "defaults"})
    tracker.log_metrics(run_id, "validate", {"parity_pass": 1.0, "mxnet_loaded": 1.0, "mxnet_accuracy": 0.91})
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.96, "near_chance": 0.0})
    tracker.log_metrics(run_id, "prepare", {"rows_train": 1259.0})
    tracker.finish_run(run_id, "finished")

    render_report(run_id, tracker, store)
    page = (tmp_path / "store" / "runs" / run_id / "report" / "index.html").read_text()
    table = page[page.index("<h2>Metrics") : page.index("<h2>Parameters")]
    rows = re.findall(
        r'<tr class="group"><th colspan="2">(\w+)</th>|<td><code>(\w+)</code></td><td class="num">([^<]+)<', table
    )
    shown = [group or (key, value) for group, key, value in rows]
    assert shown == [
        "prepare",
        ("rows_train", "1,259"),
        "train",
        ("near_chance", "no"),
        ("val_accuracy", "0.96"),
        "validate",
        ("mxnet_accuracy", "0.91"),
        ("mxnet_loaded", "yes"),
        ("parity_pass", "yes"),
    ]


def test_a_page_rendered_ahead_serves_only_the_bytes_it_was_rendered_from():
    source = (ROOT / "notebooks" / "03_export_onnx.ipynb").read_bytes()
    other = (ROOT / "notebooks" / "01_prepare_data.ipynb").read_bytes()
    pages = PagesAhead()
    try:
        pages.add("export", source, "runs/x/03_export_onnx.ipynb")
        pages.add("prepare", b"{not a notebook", "runs/x/01_prepare_data.ipynb")
        assert pages.page("export", source, "runs/x/03_export_onnx.ipynb") == _notebook_html(source, "u")
        changed = pages.page("export", other, "runs/x/03_export_onnx.ipynb")  # the store holds other bytes
        assert changed == _notebook_html(other, "u") and "prepare_data" in changed
        with pytest.raises(ReportError, match=r"runs/x/01_prepare_data\.ipynb is unreadable"):
            pages.page("prepare", b"{not a notebook", "runs/x/01_prepare_data.ipynb")
    finally:
        pages.close()
