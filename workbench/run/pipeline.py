"""``workbench run``: execute the step notebooks in order with papermill, track and report.

Each step's executed notebook is written to a scratch folder, then put into the store whether
the step passed or failed, so a failure keeps its evidence (the error sits in the notebook).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.config.parameters import Parameters, project_root
from workbench.errors import ParameterError, ReportError, StepFailed, WorkbenchError
from workbench.run.kernel import KERNEL_NAME, KernelsAhead, KernelStartError, WarmKernel, ensure_kernel
from workbench.run.preflight import check_before_run
from workbench.run.reuse import Reuse, check_rerun
from workbench.run.timeline import Timeline
from workbench.storage import open_store
from workbench.storage.base import Store
from workbench.storage.catalog import NOTEBOOKS, RunLayout, kernel_log, notebook
from workbench.storage.scratch import root as scratch_root
from workbench.storage.sources import fingerprint_answer
from workbench.tracking.aliases import alias_name, current, is_alias
from workbench.tracking.tracker import HEARTBEAT, Tracker, new_holder

if TYPE_CHECKING:
    from workbench.run.report import PagesAhead


@dataclass(frozen=True)
class StepSpec:
    name: str
    notebook: str
    section: str
    shared: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # further sections, injected as <section>_<key>

    def keyed(self, params: Parameters) -> dict[str, Any]:
        """The parameters this step reads, by their dotted keys: what its reuse key holds of them
        (``store``, ``db`` and ``run_id`` say where, not what)."""
        sections = (self.section, *self.extra)
        return {
            key: value
            for key, value in params.values.items()
            if key in self.shared or key.partition(".")[0] in sections
        }

    def parameters(self, params: Parameters, run_id: str, store_root: str) -> dict[str, Any]:
        """What papermill injects: the run's coordinates plus this step's section, unprefixed."""
        return {
            "run_id": run_id,
            "store": store_root,
            "db": params["db"],
            **{k: params[k] for k in self.shared},
            **params.section(self.section),
            **{f"{extra}_{k}": v for extra in self.extra for k, v in params.section(extra).items()},
        }


STEPS: tuple[StepSpec, ...] = (
    StepSpec(
        "prepare",
        NOTEBOOKS["prepare"],
        "data",
        ("seed", "engine"),
        ("workbench.stages.prepare_data", "matplotlib.pyplot"),
        ("dask",),
    ),
    StepSpec("train", NOTEBOOKS["train"], "train", ("seed",), ("workbench.stages.train", "matplotlib.pyplot")),
    StepSpec("export", NOTEBOOKS["export"], "export", (), ("workbench.stages.export_onnx", "onnxruntime")),
    StepSpec(
        "validate",
        NOTEBOOKS["validate"],
        "validate",
        (),
        ("workbench.stages.validate_mxnet", "mxnet", "matplotlib.pyplot"),
        ("publish",),
    ),
    StepSpec(
        "score",
        NOTEBOOKS["score"],
        "score",
        ("engine",),
        ("workbench.stages.batch_score", "matplotlib.pyplot"),
        ("publish", "dask"),
    ),
)
TRAINING = ("prepare", "train", "export", "validate")  # what `workbench run` does unless told --steps


def select_steps(names: str | None) -> list[StepSpec]:
    """Steps named in a comma list (pipeline order is kept); the training pipeline by default."""
    wanted = [n.strip() for n in (",".join(TRAINING) if names is None else names).split(",") if n.strip()]
    known = [s.name for s in STEPS]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        problem = f"unknown step {', '.join(unknown)}" if unknown else "names no step"
        raise ParameterError(f"--steps {names!r}: {problem}; steps are {', '.join(known)}")
    return [s for s in STEPS if s.name in wanted]


@dataclass
class RunResult:
    run_id: str
    status: str
    report: str


def _reopen(tracker: Tracker, run_id: str, given: Parameters) -> tuple[Parameters, list[StepSpec], list[StepSpec]]:
    """The parameters, planned steps and remaining steps of a run to resume."""
    from workbench.config.parameters import of_run

    run = tracker.get_run(run_id)
    planned = [s for s in STEPS if s.name in {row["name"] for row in run["steps"]}]
    done = {s["name"] for s in run["steps"] if s["status"] == "finished"}
    todo = [s for s in planned if s.name not in done]
    if run["status"] == "finished" or not todo:
        raise WorkbenchError(f"run {run_id} already finished; nothing to resume (start a new run with `workbench run`)")
    return of_run(run_id, run["parameters"], given), planned, todo


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler stopping the job, a closed terminal), handled like Ctrl-C;
    ``signum`` gives the exit status a shell expects of it (128 + the signal)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Interrupted` while the block runs (main thread only),
    so a stopped run is marked failed and interrupted, and stays resumable, instead of `running`."""

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name, signum)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def holding(tracker: Tracker, run_id: str, holder: str) -> Iterator[None]:
    """Keep this process's claim on the run fresh while its steps execute, then let it go."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT.total_seconds()):
            with contextlib.suppress(WorkbenchError):  # a missed beat only shortens the claim
                tracker.heartbeat(run_id, holder)

    thread = threading.Thread(target=beat, name=f"heartbeat {run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(WorkbenchError):  # a stale claim expires by itself
            tracker.release_run(run_id, holder)


def notebooks_dir() -> Path:
    folder = project_root() / "notebooks"
    if not (folder / STEPS[0].notebook).is_file():
        raise WorkbenchError(
            f"no step notebooks in {folder}; run workbench from the project folder (the one holding notebooks/)"
        )
    return folder


def skip_iri_grammar() -> None:
    """Keep jsonschema from importing ``rfc3987_syntax`` in this process.

    Where it is installed (JupyterLab's jupyter-events brings it), jsonschema imports it for its
    ``iri`` format checks, and it compiles a Lark grammar as it is imported: 1 to 2.5 s of the
    run's own start, before papermill can run the first step. Neither papermill's nor nbconvert's
    notebook validation checks formats, so nothing here needs it. For ``workbench run``'s
    process only; a notebook kernel is not touched.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def execute_step(
    step: StepSpec,
    parameters: dict[str, Any],
    folder: Path,
    output: Path,
    kernel: WarmKernel,
    timeline: Timeline | None = None,
) -> Exception | None:
    """Run one notebook; returns what stopped it (a cell raised, the kernel died, a cell timed out:
    it carries the cell's traceback), None on success. :func:`error_line` says it in one line."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    timeline = timeline or Timeline()
    try:
        with timeline.phase("kernel wait", step.name):
            kernel.ready()
        with timeline.phase("papermill", step.name):
            papermill.execute_notebook(
                str(folder / step.notebook),
                str(output),
                parameters=parameters,
                kernel_name=KERNEL_NAME,
                cwd=str(folder),
                progress_bar=False,
                request_save_on_cell_execute=True,  # a kernel that dies still leaves its notebook so far
                km=kernel.km,
            )
    except (KernelStartError, PapermillExecutionError, DeadKernelError, CellTimeoutError) as exc:
        return exc
    return None


def error_line(step: StepSpec, failure: Exception) -> str:
    """The one line a step failure is recorded and printed as."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(failure, PapermillExecutionError):
        return f"{failure.ename}: {failure.evalue}"
    if isinstance(failure, KernelStartError):
        return f"KernelStartError: {failure}; see {kernel_log(step.name).path} in the run folder"
    if isinstance(failure, DeadKernelError):
        return f"DeadKernelError: the kernel died (killed, or out of memory?); see {kernel_log(step.name).path} in the run folder"
    return f"{type(failure).__name__}: {str(failure).strip().splitlines()[0]}"


def run_pipeline(
    params: Parameters,
    say: Callable[[str], None] = _say,
    resume: str | None = None,
    steps: str | None = None,
    run_id: str | None = None,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    reuse: bool = True,
    rerun: str | None = None,
    profile: Path | None = None,
) -> RunResult:
    """Create a run, execute every step, render the report; raise ``StepFailed`` on a failing step.

    The run row, the executed notebooks and the report exist even when a step fails. With
    ``resume``, an unfinished run continues with its own parameters from its first unfinished
    step (training from its last checkpoint). One process at a time executes a run: the claim
    lives in the tracking DB, so it holds across machines sharing a PostgreSQL database.

    A step whose key matches a finished step of an earlier run is reused from it instead of
    executed (:mod:`workbench.run.reuse`), unless ``reuse`` is off or ``rerun`` names it or an
    earlier step; a line says for each step which it is, and why.

    With ``profile``, where the run's wall time went is written there as JSON
    (:mod:`workbench.run.timeline`), whatever the run's outcome.
    """
    timeline = Timeline(enabled=profile is not None)
    with timeline.phase("setup"):
        folder = notebooks_dir()
        ensure_kernel()
    holder = new_holder()
    with tempfile.TemporaryDirectory(prefix="run-", dir=scratch_root()) as tmp, contextlib.ExitStack() as stack:
        stack.callback(timeline.write, profile)  # the last thing to happen: after the report
        scratch = Path(tmp)

        with timeline.phase("setup"):
            tracker = Tracker(params["db"])
            if resume:
                params, planned, todo = _reopen(tracker, resume, params)
                tracker.claim_run(resume, holder)
                stack.enter_context(holding(tracker, resume, holder))
            else:
                planned = todo = select_steps(steps)
            store = open_store(params["store"])
            store.check()  # a missing bucket or an unwritable folder, before a run is recorded
            check_before_run(params, [s.name for s in todo], tracker, store, resume)  # a missing GPU, no model run
            forced = check_rerun(rerun, tuple(s.name for s in planned))
        # Kernels boot ahead of their steps from the first step that runs on (a run whose steps
        # are all reused starts none); a step that is reused gives its kernel up.
        ahead: KernelsAhead | None = None
        pages: PagesAhead | None = None
        with timeline.phase("tracking"):
            if resume:
                run_id = resume
                tracker.reopen_run(run_id)
            else:
                run_id = tracker.create_run(
                    store.root, params.values, params.origin, run_id=run_id, holder=holder, name=name, tags=tags
                )
                stack.enter_context(holding(tracker, run_id, holder))
                tracker.plan_steps(run_id, [s.name for s in planned])
        if resume:
            say(f"run {run_id}: resuming at {todo[0].name}, artifacts in {store.uri(RunLayout(run_id).root)}")
        else:
            say(f"run {run_id}: {len(planned)} steps, artifacts in {store.uri(RunLayout(run_id).root)}")
        failure: str | None = "interrupted"  # what the run row says if we leave by an unforeseen exit
        running: tuple[str, float] | None = None
        reuser = Reuse(
            tracker,
            store,
            run_id,
            folder,
            reuse,
            forced,
            resolve_model=_model_run(tracker, run_id),
            query=fingerprint_answer,
        )
        try:
            for i, step in enumerate(todo):
                number = planned.index(step) + 1
                publishes = params["publish.url"] if "publish" in step.extra else ""
                with timeline.phase("reuse key", step.name):
                    decision = reuser.decide(step.name, step.notebook, step.keyed(params), publishes)
                if decision.source:
                    if ahead:  # started in case this step had to run
                        ahead.drop(step.name)
                    with timeline.phase("tracking", step.name):
                        took = reuser.apply(decision)
                    say(f"[{number}/{len(planned)}] {decision.line} in {took:.1f} s")
                    continue
                say(f"[{number}/{len(planned)}] {decision.line}")
                if ahead is None:
                    ahead = KernelsAhead(
                        [(s.name, s.preload, scratch / kernel_log(s.name).file) for s in todo[i:]], folder
                    )
                    stack.callback(ahead.close)
                    pages = _pages_ahead()  # its imports take place while the first kernel boots
                    stack.callback(pages.close)
                kernel = ahead.take(step.name)
                key = RunLayout(run_id).key(notebook(step.name))
                with timeline.phase("tracking", step.name):
                    reuser.record(decision)
                    tracker.start_step(run_id, step.name, store.uri(key))
                say(f"[{number}/{len(planned)}] {step.name:<9} {step.notebook} ...")
                running = step.name, time.perf_counter()
                output = scratch / step.notebook
                parameters = step.parameters(params, run_id, store.root)
                failed = execute_step(step, parameters, folder, output, kernel, timeline)
                error = error_line(step, failed) if failed else None
                with timeline.phase("kernel shutdown", step.name):
                    kernel.shutdown()
                timeline.kernel(step.name, **kernel.times())
                timeline.executed(step.name, output)
                kept = [(key, output)] if output.exists() else []
                kept.append((RunLayout(run_id).key(kernel_log(step.name)), kernel.log_path))
                for where, path in kept:
                    with timeline.phase("store", step.name):
                        info = store.put_file(where, path)
                    with timeline.phase("tracking", step.name):
                        tracker.log_artifact(run_id, step.name, info)
                if pages and output.exists():  # its report page renders while the next step runs
                    pages.add(step.name, output.read_bytes(), store.uri(key))
                with timeline.phase("tracking", step.name):
                    took = time.perf_counter() - running[1]
                    tracker.finish_step(run_id, step.name, "failed" if error else "finished", took, error)
                running = None
                say(f"[{number}/{len(planned)}] {step.name:<9} {'FAILED' if error else 'done'} in {took:.1f} s")
                if error:
                    raise StepFailed(step.name, error) from failed  # --traceback shows the cell's traceback
            failure = None
        except WorkbenchError as exc:
            failure = str(exc)
            raise
        except KeyboardInterrupt as exc:
            failure = f"interrupted by {exc}" if isinstance(exc, Interrupted) else "interrupted"
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            raise Interrupted(
                f"run {run_id} {failure}; continue it with `workbench run --resume {run_id}`", signum
            ) from exc
        except Exception as exc:  # a bug: recorded as the run's failure, then raised with its traceback
            failure = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with timeline.phase("tracking"):
                if running:  # left mid-step: the step must not stay "running" forever
                    tracker.finish_step(run_id, running[0], "failed", time.perf_counter() - running[1], failure)
                tracker.finish_run(run_id, "failed" if failure else "finished", failure)
            with timeline.phase("report"):
                report = _report(run_id, tracker, store, failure, say, pages)
    return RunResult(run_id, "finished", report)


def _pages_ahead() -> PagesAhead:
    from workbench.run.report import PagesAhead

    return PagesAhead()


def _model_run(tracker: Tracker, run_id: str) -> Callable[[str], str | None]:
    """How the score step will resolve ``score.model_run``, for its key: ``latest`` to a run id."""

    def resolve(spec: str) -> str | None:
        if is_alias(spec):
            return current(tracker).get(alias_name(spec))
        if spec == "latest":
            return tracker.latest_model(own=run_id)
        return spec if tracker.has_run(spec) else None

    return resolve


def _report(
    run_id: str,
    tracker: Tracker,
    store: Store,
    failure: str | None,
    say: Callable[[str], None],
    pages: PagesAhead | None = None,
) -> str:
    """Render the run's report; when that fails, the run's record says the report is missing.

    After successful steps the failure is this run's outcome (``ReportError``, status
    ``incomplete``); after a failed step the step's error stays the one raised.
    """
    from workbench.run.report import render_report

    try:
        report = render_report(run_id, tracker, store, warn=lambda message: say(f"warning: {message}"), pages=pages)
    except (WorkbenchError, OSError) as exc:
        problem = (
            f"report not written ({exc}); the steps' artifacts are kept, "
            f"render it again with `workbench report {run_id}`"
        )
        tracker.finish_run(
            run_id, "failed" if failure else "incomplete", f"{failure}; {problem}" if failure else problem
        )
        if failure:
            say(f"error: {problem}")
            return ""
        raise ReportError(f"run {run_id}: {problem}") from exc
    if failure:
        say(f"report: {report}")
    return report
