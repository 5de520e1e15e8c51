"""Each parameter is written once, in workbench/config/schema.py; everything else is generated from
it or checked against it, and every way into a step validates through it."""

from __future__ import annotations

import ast
import inspect
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from support.cli import workbench

from workbench.config.docs import README_END, default_yaml, readme_table
from workbench.config.parameters import load
from workbench.config.schema import KEYS, SECTIONS, Params, ScoreParams, TrainParams
from workbench.errors import ParameterError
from workbench.ml.training.job import TrainJob
from workbench.run.notebooks import check_generated, notebook_names, notebook_parameters, parameters_cell
from workbench.run.pipeline import STEPS
from workbench.stages.batch_score import score_batch
from workbench.stages.export_onnx import export_onnx
from workbench.stages.prepare_data import prepare_data
from workbench.stages.train import train_model
from workbench.stages.validate_mxnet import validate_model

ROOT = Path(__file__).resolve().parents[1]
STAGES = (prepare_data, train_model, export_onnx, validate_model, score_batch)


def _cells(step) -> list:
    nb = nbformat.read(ROOT / "notebooks" / step.notebook, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code"]


def test_default_yaml_is_generated_from_the_schema():
    assert (ROOT / "parameters" / "default.yaml").read_text() == default_yaml()


def test_readme_table_is_generated_from_the_schema_and_lists_every_key():
    readme = (ROOT / "README.md").read_text()
    table = readme_table()
    assert table in readme and readme.count(README_END) == 1
    assert all(f"| `{k.key}` |" in table for k in KEYS)


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_notebook_parameters_cell_is_generated_from_the_schema(step):
    cell = _cells(step)[0]
    assert "parameters" in cell.metadata.get("tags", [])
    assert cell.source == parameters_cell(step)


def test_nothing_generated_has_drifted():
    assert check_generated(ROOT) == []


@pytest.mark.parametrize("stage", STAGES, ids=lambda f: f.__name__)
def test_no_stage_function_takes_a_per_key_argument(stage):
    """A stage takes its section's model (plus the shared seed), never a section key one by one."""
    per_key = {k.name for k in KEYS if k.section} | {f"{k.section}_{k.name}" for k in KEYS if k.section}
    signature = inspect.signature(stage)  # annotations as written (the stages import them for type checking only)
    names = set(signature.parameters)
    assert not names & per_key, f"{stage.__name__} takes {names & per_key}"
    models = {m.__name__ for m in SECTIONS.values()}
    taken = [p.name for p in signature.parameters.values() if str(p.annotation).split(" |")[0] in models]
    assert taken, f"{stage.__name__} takes no section model"
    if "seed" in names:
        assert signature.parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_papermill_reads_every_name_of_the_parameters_cell(step, caplog):
    """papermill lists a notebook's parameters from this cell (``papermill --help-notebook``, and its
    "unknown parameter" warning); a comment it cannot parse would hide the name."""
    from papermill.translators import PythonTranslator

    found = [p.name for p in PythonTranslator.inspect(nbformat.v4.new_code_cell(parameters_cell(step)))]
    assert found == ["run_id", *notebook_names(step)] and "Unable to parse" not in caplog.text


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_notebook_call_cell_is_thin_and_validates(step):
    source = _cells(step)[1].source
    tree = ast.parse(source)
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.For, ast.While, ast.ClassDef))]
    assert len(tree.body) <= 3  # the import, open_step, the stage call
    assert f'wb.open_step("{step.name}", globals())' in source


def test_help_all_lists_every_key_with_its_default():
    from workbench.cli import keys_table

    text = keys_table()  # what --help-all and `workbench params` print after the command's help
    assert all(k.key in text and repr(k.default) in text for k in KEYS)


def test_every_key_has_help():
    assert all(k.help for k in KEYS)


def test_notebook_names_are_what_the_pipeline_injects():
    params = load(root=ROOT)
    for step in STEPS:
        injected = step.parameters(params, "r", "artifacts")
        assert set(notebook_names(step)) | {"run_id"} == set(injected)


def test_a_bad_notebook_parameter_is_one_line_naming_key_and_parameter():
    with pytest.raises(ParameterError) as err:
        notebook_parameters("train", {"schedule": "cosin", "epochs": 3})
    assert str(err.value) == (
        "train.schedule in notebook parameter schedule='cosin': must be 'cosine' or 'constant', got 'cosin'"
    )
    with pytest.raises(
        ParameterError, match=r"^publish.url in notebook parameter publish_url='postgresql://u:\*\*\*@h/d'"
    ):
        notebook_parameters("score", {"publish_url": "postgresql://u:secret@h/d"})
    with pytest.raises(ParameterError, match=r"^export.opset in notebook parameter opset=17: MXNet imports opset 12"):
        notebook_parameters("export", {"opset": 17})


def test_notebook_parameters_read_text_as_yaml_and_default_what_is_missing():
    params = notebook_parameters("train", {"lr": "1e-3", "amp": "false", "epochs": 5, "unrelated": object()})
    assert params.train.lr == 1e-3 and params.train.amp is False and params.train.epochs == 5
    assert params.train.model == "auto" and params.seed == 0
    assert notebook_parameters("validate", {"publish_table": "t"}).publish.table == "t"


def test_a_model_built_by_hand_refuses_in_one_line():
    with pytest.raises(
        ParameterError,
        match=r"^train.epochs in TrainParams\(epochs=0\): must be greater than 0 and at most 100000, got 0$",
    ):
        TrainParams(epochs=0)
    with pytest.raises(
        ParameterError,
        match=r"^unknown parameter 'score.batch' in ScoreParams\(batch=3\); did you mean score.batch_size",
    ):
        ScoreParams(batch=3)


def test_parameters_carry_the_typed_model():
    params = load(sets=["train.epochs=7", "validate.atol=1e-5"], root=ROOT)
    assert isinstance(params.model, Params)
    assert params.model.train.epochs == 7 == params["train.epochs"] and params.model.validate.atol == 1e-5


def test_train_job_travels_as_json_to_torchrun_workers():
    job = TrainJob(run_id="r", store="s", db="sqlite:///x.db", train=TrainParams(epochs=2, schedule="constant"), seed=3)
    again = TrainJob.model_validate_json(job.model_dump_json())
    assert again == job and again.settings == job.settings
    assert job.settings.model_dump() == {
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.002,
        "schedule": "constant",
        "patience": 0,
        "monitor": "val_loss",
        "clip_grad_norm": 0.0,
        "seed": 3,
    }
    assert json.loads(job.model_dump_json())["train"]["epochs"] == 2


def test_check_names_the_notebook_and_the_difference_and_sync_repairs_it(tmp_path):
    for name in ("README.md", "parameters", "notebooks"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    path = tmp_path / "notebooks" / STEPS[1].notebook
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace('schedule = "cosine"', 'schedule = "cosin"')
    nbformat.write(nb, path)
    checked = workbench("notebooks", "--check", cwd=tmp_path)
    assert checked.code == 1
    assert f"notebooks/{STEPS[1].notebook}: parameters cell differs from workbench/config/schema.py" in checked.stderr
    assert '-schedule = "cosin"' in checked.stderr and '+schedule = "cosine"' in checked.stderr
    synced = workbench("notebooks", "--sync", cwd=tmp_path)
    assert synced.code == 0 and f"wrote notebooks/{STEPS[1].notebook}" in synced.stdout
    assert workbench("notebooks", "--check", cwd=tmp_path).code == 0
    assert nbformat.read(path, as_version=4).cells[-1] == nb.cells[-1]  # outputs and other cells kept


@pytest.mark.e2e
def test_plain_papermill_refuses_a_bad_parameter_in_one_line(tmp_path):
    """A typo such as `schedule = "cosin"` under plain papermill once trained at a constant rate."""
    import subprocess
    import sys

    from workbench.run.kernel import ensure_kernel

    ensure_kernel()
    db = f"sqlite:///{tmp_path}/t.db"
    args = ["-p", "schedule", "cosin", "-p", "run_id", "bad", "-p", "store", str(tmp_path / "s"), "-p", "db", db]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "papermill"),
            str(ROOT / "notebooks" / STEPS[1].notebook),
            "out.ipynb",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = "ParameterError: train.schedule in notebook parameter schedule='cosin': must be 'cosine' or 'constant', got 'cosin'"
    assert proc.returncode == 1 and line in proc.stderr
    assert not (tmp_path / "s" / "runs" / "bad").exists()  # refused before anything was recorded


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "/abs", ".hidden", "x" * 65, "", 7])
def test_a_run_id_that_is_not_a_plain_name_is_refused_before_anything_is_recorded(run_id, tmp_path):
    """A run id names a folder under the store's runs/: papermill's `-p run_id ../escape` is refused
    by the notebook's first cell, and neither the store nor the db is touched."""
    from workbench.run.notebooks import open_step

    namespace = {"run_id": run_id, "store": str(tmp_path / "store"), "db": f"sqlite:///{tmp_path}/t.db"}
    with pytest.raises(
        ParameterError, match=r"^run_id in notebook parameter run_id=.*: expected a run id, a plain name"
    ):
        open_step("prepare", namespace)
    assert list(tmp_path.iterdir()) == []
