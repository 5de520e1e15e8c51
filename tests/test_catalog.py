"""The artifact catalog: one table of every file a run writes, and the only place names and keys live."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.cli import workbench

from workbench.storage import catalog
from workbench.storage.catalog import CATALOG, FIGURES, FORMATS, RunLayout, decode, encode
from workbench.tracking.tracker import Tracker

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# A string literal that is a file name or suffix of an artifact-like format (no spaces: messages
# and docstrings may mention files; code that builds a path must ask the catalog).
FILE_NAME = re.compile(r"^\S*\.(json|parquet|png|onnx|pth|pt|npz|tar\.gz)$")


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_artifact_file_name_outside_the_catalog():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "templates" in path.parts or path.name == "catalog.py":
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            string = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            if string and FILE_NAME.match(node.value):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not offenders, "file names belong in workbench/storage/catalog.py:\n" + "\n".join(offenders)


def test_no_run_folder_built_outside_the_catalog():
    """``runs/<id>/...`` keys come from RunLayout alone."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "catalog.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"""f["']runs/\{""", line)
    ]
    assert not offenders


def test_catalog_entries_are_consistent():
    from workbench.ml.splits import SPLITS
    from workbench.run.pipeline import STEPS

    names = [a.name for a in CATALOG]
    assert len(names) == len(set(names))
    assert len({a.path for a in CATALOG}) == len(CATALOG)
    assert tuple(s.name for s in STEPS) == catalog.STEP_ORDER
    assert {s.name: s.notebook for s in STEPS} == catalog.NOTEBOOKS
    assert tuple(catalog.SPLIT_ARTIFACTS) == SPLITS
    for a in CATALOG:
        assert a.format in FORMATS and a.file.endswith(FORMATS[a.format]), a
        assert a.step in (*catalog.STEP_ORDER, "report"), a
        assert a.description and "\n" not in a.description, a
        assert bool(a.title) == a.is_figure, f"{a.name}: a figure, and only a figure, has a report title"
        assert catalog.artifact(a.name) is a
    order = [catalog.STEP_ORDER.index(f.step) for f in FIGURES]
    assert order == sorted(order) and len(FIGURES) >= 3
    with pytest.raises(KeyError, match="no artifact 'modle_state'"):
        catalog.artifact("modle_state")


def test_layout_on_disk_is_unchanged():
    layout = RunLayout("r1")
    assert layout.root == "runs/r1"
    expected = {
        catalog.TRAIN_SPLIT: "runs/r1/prepare/train.parquet",
        catalog.ENCODING: "runs/r1/prepare/encoding.json",
        catalog.MODEL_STATE: "runs/r1/train/model.pth",
        catalog.CHECKPOINT: "runs/r1/train/checkpoints/last.pt",
        catalog.CURVES: "runs/r1/train/curves.png",
        catalog.ONNX_MODEL: "runs/r1/export/model.onnx",
        catalog.REFERENCE_OUTPUTS: "runs/r1/export/reference.npz",
        catalog.PARITY_PLOT: "runs/r1/validate/parity.png",
        catalog.PREDICTIONS: "runs/r1/score/predictions.parquet",
        catalog.notebook("train"): "runs/r1/02_train.ipynb",
        catalog.kernel_log("export"): "runs/r1/logs/export.kernel.log",
        catalog.report_page("validate"): "runs/r1/report/04_validate_mxnet.html",
        catalog.REPORT_INDEX: "runs/r1/report/index.html",
    }
    for entry, key in expected.items():
        assert layout.key(entry) == layout.key(entry.name) == key
        assert layout.find(key) is entry
    assert layout.find("runs/r1/train/notes.txt") is None


def test_formats_round_trip():
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    assert decode(catalog.SCHEMA, encode(catalog.SCHEMA, {"classes": [0, 1]})) == {"classes": [0, 1]}
    pd.testing.assert_frame_equal(decode(catalog.TRAIN_SPLIT, encode(catalog.TRAIN_SPLIT, frame)), frame)
    pd.testing.assert_frame_equal(decode(catalog.HISTORY, encode(catalog.HISTORY, frame)), frame)
    arrays = decode(catalog.REFERENCE_OUTPUTS, encode(catalog.REFERENCE_OUTPUTS, {"x": np.eye(2)}))
    np.testing.assert_array_equal(arrays["x"], np.eye(2))
    assert decode(catalog.ONNX_MODEL, encode(catalog.ONNX_MODEL, b"raw")) == b"raw"
    with pytest.raises(TypeError, match="model_state"):
        encode(catalog.MODEL_STATE, {"weights": 1})


def test_context_saves_and_loads_by_name(tmp_path):
    from workbench.run.context import step_context

    ctx = step_context("prepare", run_id="cat", store=str(tmp_path / "store"), db=f"sqlite:///{tmp_path}/t.db")
    ctx.save_artifact("schema", {"target": "label"})
    assert (tmp_path / "store" / "runs" / "cat" / "prepare" / "schema.json").is_file()
    assert ctx.load_artifact(catalog.SCHEMA) == {"target": "label"} and ctx.has_artifact("schema")
    assert not ctx.has_artifact(catalog.ENCODING)
    with pytest.raises(ValueError, match="belongs to step train"):
        ctx.save_artifact(catalog.MODEL_CONFIG, {})
    recorded = ctx.tracker.get_run("cat")["artifacts"]
    assert [(a["key"], a["step"]) for a in recorded] == [("runs/cat/prepare/schema.json", "prepare")]


def _recorded_matches_catalog(db: str, run_id: str) -> None:
    run = Tracker(db).get_run(run_id)
    layout = RunLayout(run_id)
    steps = [s["name"] for s in run["steps"]]
    recorded = {a["key"]: a["step"] for a in run["artifacts"]}
    # the optional artifacts whose condition the run's metrics show to hold
    held = {catalog.WITH_TEST_ROWS} if "test_rmse" in run["metrics"] else set()
    if "test_accuracy" in run["metrics"]:
        held |= {catalog.WITH_TEST_ROWS, catalog.CLASSES_WITH_TEST_ROWS}
    wanted = {
        layout.key(a): a.step for step in steps for a in catalog.of_step(step) if not a.optional or a.when in held
    }
    assert recorded == wanted


def test_a_finished_run_records_exactly_the_catalog_artifacts_of_its_steps(small_run):
    _recorded_matches_catalog(small_run.place.db, small_run.run_id)
    index = (small_run.folder / "report" / "index.html").read_text()
    for figure in FIGURES:
        assert (figure.title in index) == (figure.step != "score")
    assert catalog.ONNX_MODEL.description.replace("'", "&#39;") in index


def test_a_scoring_run_records_exactly_the_catalog_artifacts_of_score(small_run):
    result = workbench("run", "--steps", "score", *small_run.place.sets(f"score.model_run={small_run.run_id}"))
    assert result.code == 0, result.stderr
    _recorded_matches_catalog(small_run.place.db, result.stdout.split()[1])
