"""The notebooks as users run them: thin, parameterised, runnable under plain papermill, guarded by nbval."""

from __future__ import annotations

import ast
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest

from workbench.run.kernel import ensure_kernel
from workbench.run.pipeline import STEPS
from workbench.tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [ROOT / "notebooks" / s.notebook for s in STEPS]
BIN = Path(sys.executable).parent


def code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin(path):
    cells = code_cells(path)
    assert "parameters" in cells[0].metadata.get("tags", [])
    assert nbformat.read(path, as_version=4).metadata.kernelspec.name == "workbench"
    # what nbval compares is tagged in the cell's metadata, not written in the code a reader sees
    assert any("nbval-check-output" in c.metadata.get("tags", []) for c in cells)
    for cell in cells:
        assert "NBVAL" not in cell.source, cell.source
        tree = ast.parse(cell.source)
        banned = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.ListComp, ast.DictComp)
        assert not [type(n).__name__ for n in ast.walk(tree) if isinstance(n, banned)], cell.source
        if "parameters" not in cell.metadata.get("tags", []):  # that one is generated, a line per key
            assert len([line for line in cell.source.splitlines() if line.strip()]) <= 15


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_a_clean_reference_run(path):
    """Outputs for nbval, executed top to bottom with no errors and no injected parameters."""
    cells = code_cells(path)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1))
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in cells)


@pytest.mark.e2e
def test_each_notebook_runs_under_plain_papermill(tmp_path):
    ensure_kernel()
    common = ["-p", "run_id", "plain", "-p", "store", str(tmp_path / "store"), "-p", "db", f"sqlite:///{tmp_path}/t.db"]
    overrides = {
        "02_train": ["-p", "epochs", "2", "-p", "batch_size", "64", "-p", "device", "cpu"],
        "03_export_onnx": ["-p", "opset", "11"],
        "05_batch_score": ["-p", "backend", "mxnet", "-p", "batch_size", "500", "-p", "model_run", "plain"],
    }
    for path in NOTEBOOKS:
        out = tmp_path / path.name
        proc = subprocess.run(
            [str(BIN / "papermill"), str(path), str(out), *common, *overrides.get(path.stem, [])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    history = (tmp_path / "store/runs/plain/train/history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 2
    import onnx

    assert onnx.load(tmp_path / "store/runs/plain/export/model.onnx").opset_import[0].version == 11
    verdict = json.loads((tmp_path / "store/runs/plain/validate/parity.json").read_text())["verdict"]
    assert verdict == "PASS"
    assert (tmp_path / "store/runs/plain/score/predictions.parquet").is_file()

    def again(stem: str, *extra: str) -> subprocess.CompletedProcess:
        [path] = [p for p in NOTEBOOKS if p.stem == stem]
        command = [str(BIN / "papermill"), str(path), str(tmp_path / f"again-{path.name}"), *common, *extra]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    # notebook 02 once more with the same parameters (a second Run All, a scheduler's retry) changes nothing
    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    before = tracker.get_run("plain")
    assert again("02_train", *overrides["02_train"]).returncode == 0
    after = tracker.get_run("plain")
    assert after["status"] == "finished" and {s["status"] for s in after["steps"]} == {"finished"}
    assert after["artifacts"] == before["artifacts"] and after["metrics"] == before["metrics"]
    said = _outputs_text(tmp_path / "again-02_train.ipynb")
    assert "nothing trained, nothing rewritten" in said and "must run again" not in said

    # training once more in the same run: what export, validate and score made came from the old weights
    assert again("02_train", "-p", "epochs", "3", "-p", "batch_size", "64", "-p", "device", "cpu").returncode == 0
    assert (
        "train wrote new outputs, so export, validate and score of run plain must run again (notebooks 03, 04 and 05)"
        in _outputs_text(tmp_path / "again-02_train.ipynb")
    )
    run = Tracker(f"sqlite:///{tmp_path}/t.db").get_run("plain")
    assert {s["name"]: s["status"] for s in run["steps"]} == {
        "prepare": "finished",
        "train": "finished",
        "export": "stale",
        "validate": "stale",
        "score": "stale",
    }
    assert run["status"] == "stale"
    refused = again("05_batch_score", *overrides["05_batch_score"])
    assert refused.returncode == 1
    assert "run plain was trained again after its export, so its model.onnx holds the earlier weights" in refused.stderr
    serve = subprocess.run(
        [
            str(BIN / "workbench"),
            "serve",
            *(f"--set={s}" for s in (f"store={tmp_path / 'store'}", f"db=sqlite:///{tmp_path}/t.db")),
            *("--set=serve.model=plain", "--set=serve.port=0"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 1 and serve.stderr.strip().endswith("run its export step (notebook 03) again"), serve
    assert again("03_export_onnx").returncode == 0
    # score.model_run 'latest' in a run with a model of its own: that one, its stale verdict said out loud
    scored = again("05_batch_score", "-p", "backend", "mxnet", "-p", "batch_size", "500")
    assert scored.returncode == 0, scored.stderr[-3000:]
    said = _outputs_text(tmp_path / "again-05_batch_score.ipynb")
    assert "score.model_run 'latest' is this run's own model: its parity verdict is stale" in said
    assert (
        "'latest' is run" not in said
        and '"model_run": "plain"' in (tmp_path / "store/runs/plain/score/model.json").read_text()
    )


def _outputs_text(path: Path) -> str:
    """The text an executed notebook shows under its cells (streams and plain-text results)."""
    shown = []
    for cell in code_cells(path):
        for output in cell.outputs:
            shown.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(shown)


def _nbval(target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(target)],
        cwd=target.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
def test_nbval_catches_a_tampered_output(tmp_path):
    """The regression check is live: the same notebook passes as committed and fails once tampered."""
    ensure_kernel()
    original = ROOT / "notebooks" / "01_prepare_data.ipynb"
    good = tmp_path / "good" / original.name
    good.parent.mkdir()
    shutil.copy(original, good)
    assert _nbval(good).returncode == 0

    nb = nbformat.read(original, as_version=4)
    checked = next(c for c in nb.cells if "nbval-check-output" in c.metadata.get("tags", []))
    assert "1259" in checked.outputs[0].text
    checked.outputs[0].text = checked.outputs[0].text.replace("1259", "1258")
    bad = tmp_path / "bad" / original.name
    bad.parent.mkdir()
    nbformat.write(nb, bad)
    result = _nbval(bad)
    assert result.returncode == 1 and "1258" in result.stdout


def test_a_notebook_run_records_its_parameters_with_their_origin(tmp_path):
    """JupyterLab and plain papermill runs record each notebook's validated parameters: values papermill
    injected (its `# Parameters` cell, in the kernel's input history) as papermill, the rest as notebook."""
    from workbench.run.notebooks import injected_names, open_step

    db = f"sqlite:///{tmp_path}/t.db"
    injected = f"# Parameters\nrun_id = 'nightly'\nepochs = 5\nlr = 1e-3\ndb = {db!r}\n"
    namespace = {
        "In": ["", "run_id = 'dev'\nepochs = 30\nlr = 0.002", injected],  # parameters cell, then papermill's
        "run_id": "nightly",
        "store": str(tmp_path / "store"),
        "db": db,
        "epochs": 5,
        "lr": "1e-3",  # papermill -p passes what it cannot read as a number as text
        "schedule": "constant",  # changed in the parameters cell itself
    }
    assert injected_names(namespace) == {"run_id", "epochs", "lr", "db"}
    open_step("train", namespace)
    run = Tracker(db).get_run("nightly")
    assert run["parameters"]["train.epochs"] == 5 and run["parameters"]["train.lr"] == 0.001
    assert run["parameters"]["train.schedule"] == "constant" and run["parameters"]["train.batch_size"] == 32
    assert run["origins"]["train.epochs"] == run["origins"]["train.lr"] == run["origins"]["db"] == "papermill"
    assert run["origins"]["train.schedule"] == run["origins"]["seed"] == run["origins"]["store"] == "notebook"
    assert set(run["parameters"]) == {"store", "db", "seed"} | {k for k in run["parameters"] if k.startswith("train.")}

    namespace |= {"In": ["", "epochs = 7"], "epochs": 7}  # run again in JupyterLab with another value
    open_step("train", namespace)
    again = Tracker(db).get_run("nightly")
    assert again["parameters"]["train.epochs"] == 7 and again["origins"]["train.epochs"] == "notebook"
    assert injected_names({"In": ["x = 1"]}) == set() and injected_names({}) == set()


@pytest.mark.e2e
def test_a_bad_parameter_shows_as_its_one_line_under_papermill(tmp_path):
    """What JupyterLab and papermill show for a user error: the one line, not a chained traceback
    through pydantic's internals; papermill still fails the notebook, on that line."""
    ensure_kernel()
    out = tmp_path / "02.ipynb"
    command = [str(BIN / "papermill"), str(ROOT / "notebooks" / "02_train.ipynb"), str(out)]
    command += ["-p", "run_id", "bad", "-p", "store", str(tmp_path / "store"), "-p", "db", f"sqlite:///{tmp_path}/t.db"]
    proc = subprocess.run(
        [*command, "-p", "schedule", "cosin"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    errors = [o for c in code_cells(out) for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ParameterError"
    assert [_plain(line) for line in errors[0].traceback] == [
        "ParameterError: train.schedule in notebook parameter schedule='cosin': must be 'cosine' or 'constant', "
        "got 'cosin'"
    ]
    assert "pydantic" not in out.read_text() and "pydantic" not in proc.stderr
    assert "ParameterError: train.schedule in notebook parameter schedule='cosin'" in proc.stderr


@contextlib.contextmanager
def _kernel(tmp_path: Path) -> Iterator[Callable[[str], list[dict]]]:
    """A real workbench kernel, as JupyterLab starts it; yields ``run(code)``, which executes one cell
    and returns the error outputs it showed."""
    from jupyter_client.manager import start_new_kernel

    ensure_kernel()
    km, kc = start_new_kernel(kernel_name="workbench", cwd=str(tmp_path))

    def run(code: str) -> list[dict]:
        shown: list[dict] = []
        kc.execute_interactive(code, timeout=120, output_hook=shown.append)
        return [m["content"] for m in shown if m["msg_type"] == "error"]

    try:
        yield run
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _open_step(tmp_path: Path, step: str, run_id: str) -> str:
    """A notebook's first cell for ``step`` of ``run_id`` in a scratch store and database."""
    place = dict(run_id=run_id, store=str(tmp_path / "store"), db=f"sqlite:///{tmp_path}/t.db")
    return f"import workbench as wb\nctx, params = wb.open_step({step!r}, {place!r})"


@pytest.mark.e2e
def test_in_a_kernel_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path):
    """After open_step, any workbench error a cell raises is its one line and fails the step with it;
    any other exception is a bug and shows its whole traceback."""
    with _kernel(tmp_path) as run:
        assert run(_open_step(tmp_path, "prepare", "k")) == []
        [user] = run("from workbench.errors import DataError\nraise DataError('data.source x.csv: no such file')")
        assert [_plain(line) for line in user["traceback"]] == ["DataError: data.source x.csv: no such file"]
        step = Tracker(f"sqlite:///{tmp_path}/t.db").get_run("k")["steps"][0]
        assert step["status"] == "failed" and step["error"] == "DataError: data.source x.csv: no such file"
        [bug] = run("def broken():\n    return {}['missing']\n\nbroken()")
        text = _plain("\n".join(bug["traceback"]))
        assert bug["ename"] == "KeyError" and "Traceback" in text and "return {}['missing']" in text


def _plain(text: str) -> str:
    """Text without the ANSI colours a kernel puts in tracebacks."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.e2e
def test_a_notebook_runs_seconds_are_the_time_its_cells_ran(tmp_path):
    """A notebook left open between two cells does not count the wait: the step's seconds are the
    time its cells ran, the run's the sum of its steps', in `runs show`, the runs list and its filters."""
    from sqlalchemy import select

    from workbench.tracking.queries import RunQuery, find_runs, parse_condition
    from workbench.tracking.tables import steps

    idle = 3.0
    with _kernel(tmp_path) as run:
        assert run(_open_step(tmp_path, "prepare", "idle")) == []
        time.sleep(idle)  # the notebook sits open in JupyterLab
        assert run("shown = 1") == []
    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    with tracker.engine.connect() as conn:
        started, finished, seconds = conn.execute(
            select(steps.c.started_at, steps.c.finished_at, steps.c.duration_s).where(steps.c.run_id == "idle")
        ).one()
    span = (finished - started).total_seconds()  # from opening the step to its last cell, the wait included
    assert span >= idle and seconds <= span - idle + 0.05
    record = tracker.get_run("idle")
    assert record["status"] == "finished" and record["duration_s"] == round(seconds, 1)
    assert tracker.list_runs()[0]["duration_s"] == record["duration_s"]
    shorter = RunQuery(where=(parse_condition(f"duration_s<={seconds + 0.05}"),))
    assert [r.duration_s for r in find_runs(tracker, shorter).rows] == [record["duration_s"]]
