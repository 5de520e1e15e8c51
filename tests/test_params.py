from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from workbench.errors import ParameterError
from workbench.params import SCHEMA, load, project_root
from workbench.pipeline import STEPS

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_file_holds_exactly_the_schema_defaults():
    params = load([ROOT / "parameters" / "default.yaml"])
    assert params.values == {p.key: p.default for p in SCHEMA}


def test_no_files_means_the_projects_default_yaml():
    params = load(root=ROOT)
    assert params.origin["train.epochs"].endswith("parameters/default.yaml")


def test_layers_apply_in_order_and_set_wins(tmp_path):
    first = write(tmp_path, "a.yaml", "train:\n  epochs: 5\n  lr: 0.1\n")
    second = write(tmp_path, "b.yaml", "train: {epochs: 7}\n")
    params = load([first, second], ["train.lr=0.5", "seed=3"])
    assert params["train.epochs"] == 7
    assert params.origin["train.epochs"] == str(second)
    assert params["train.lr"] == 0.5 and params["seed"] == 3
    assert params.origin["train.lr"] == "--set train.lr=0.5"


def test_set_keeps_strings_as_strings_and_ints_widen_to_float():
    params = load(sets=["train.device=cpu", "export.ort_atol=1", "train.amp=false"], root=ROOT)
    assert params["train.device"] == "cpu"
    assert params["export.ort_atol"] == 1.0 and isinstance(params["export.ort_atol"], float)
    assert params["train.amp"] is False


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = write(tmp_path, "typo.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ParameterError) as err:
        load([path])
    assert "train.epoch" in str(err.value) and str(path) in str(err.value) and "train.epochs" in str(err.value)


def test_unknown_key_from_set():
    with pytest.raises(
        ParameterError, match=r"unknown parameter 'train.epoch' in --set train.epoch=3; did you mean train.epochs"
    ):
        load(sets=["train.epoch=3"], root=ROOT)


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.epochs=abc", "train.epochs in --set train.epochs=abc: expected an integer, got 'abc'"),
        ("train.epochs=0", "train.epochs in --set train.epochs=0: must be greater than 0"),
        ("train.epochs=true", "expected an integer, got True"),
        ("train.device=gpu", "train.device in --set train.device=gpu: must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (
            "export.opset=17",
            "export.opset in --set export.opset=17: MXNet imports opset 12 at most, got 17; lower it or set export.target=onnxruntime",
        ),
        ("export.opset=21", "must be between 7 and 20"),
        ("export.target=tflite", "must be 'mxnet' or 'onnxruntime'"),
        ("data.val_fraction=1.5", "must be between 0 and 1"),
        ("db=artifacts.db", "must be a SQLAlchemy URL"),
        ("train.model=my model", "must be 'cnn', 'mlp' or 'package.module:Class'"),
        ("train.epochs", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_key_and_origin(item, message):
    with pytest.raises(ParameterError) as err:
        load(sets=[item], root=ROOT)
    assert message in str(err.value)


def test_wrong_type_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "validate:\n  atol: lots\n")
    with pytest.raises(ParameterError, match=rf"validate.atol in {path}: expected a number, got 'lots'"):
        load([path])


def test_held_out_fractions_must_leave_training_rows():
    with pytest.raises(ParameterError, match="leaves too few rows"):
        load(sets=["data.val_fraction=0.5", "data.test_fraction=0.45"], root=ROOT)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParameterError, match="not found"):
        load([tmp_path / "nope.yaml"])
    with pytest.raises(ParameterError, match=r"broken\.yaml line [0-9]+ is not valid YAML"):
        load([write(tmp_path, "broken.yaml", "train:\n  epochs: [3\n")])
    with pytest.raises(ParameterError, match="must hold a mapping"):
        load([write(tmp_path, "list.yaml", "- 1\n- 2\n")])


def test_every_layer_file_in_the_repo_is_valid():
    for path in sorted((ROOT / "parameters").glob("*.yaml")):
        load([ROOT / "parameters" / "default.yaml", path])


def test_section_and_nested():
    params = load(root=ROOT)
    assert params.section("validate") == {"atol": 1e-4, "rtol": 1e-3, "min_agreement": 0.999}
    assert params.nested()["train"]["model"] == "cnn"


def test_project_root_is_found_from_a_subfolder():
    assert project_root(ROOT / "notebooks") == ROOT


def _parameters_cell(notebook: Path) -> dict[str, object]:
    cells = json.loads(notebook.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace: dict[str, object] = {}
    exec("".join(cell["source"]), namespace)
    namespace.pop("__builtins__")
    return namespace


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_notebook_defaults_match_the_schema(step):
    """A notebook opened in JupyterLab must behave like `workbench run` on the defaults."""
    params = load(root=ROOT)
    expected = step.parameters(params, "dev", store_root="artifacts")
    assert _parameters_cell(ROOT / "notebooks" / step.notebook) == expected


def test_default_yaml_is_plain_yaml():
    assert isinstance(yaml.safe_load((ROOT / "parameters" / "default.yaml").read_text()), dict)
