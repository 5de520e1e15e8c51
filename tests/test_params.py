from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from workbench.config.parameters import SCHEMA, load, of_run, project_root, steps_problem
from workbench.errors import ParameterError
from workbench.run.pipeline import STEPS

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
        ("train.model=my model", "must be 'auto', 'cnn', 'mlp' or 'package.module:Class'"),
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


def test_a_key_given_twice_and_a_section_given_a_value_are_refused(tmp_path):
    """The last of two `epochs:` silently winning would hide which value a run took."""
    with pytest.raises(ParameterError) as caught:
        load([write(tmp_path, "twice.yaml", "train:\n  epochs: 3\n  lr: 0.01\n  epochs: 4\n")])
    assert str(caught.value).endswith("twice.yaml line 4: 'epochs' is given twice in one section; keep one")
    with pytest.raises(ParameterError) as caught:
        load([write(tmp_path, "scalar.yaml", "train: 3\n")])
    assert str(caught.value).endswith(
        "train in " + str(tmp_path / "scalar.yaml") + " is a section, not a value (got 3); write its keys under it, "
        "e.g. train: {epochs: ...}"
    )
    assert (
        load([ROOT / "parameters" / "default.yaml", write(tmp_path, "empty.yaml", "data:\n")]).values
        == load(root=ROOT).values
    )  # a section with nothing under it sets nothing


@pytest.mark.parametrize(
    ("given", "names"),
    [("data.drop=2024", ["2024"]), ("data.drop=a,2024", ["a", "2024"]), ("data.drop=[2024, a]", ["2024", "a"])],
)
def test_a_column_named_by_a_number_is_a_name(given, names):
    assert load(sets=[given], root=ROOT)["data.drop"] == names


def test_a_section_set_as_a_value_names_its_keys():
    with pytest.raises(ParameterError) as caught:
        load(sets=["train=3"], root=ROOT)
    assert str(caught.value) == "--set 'train=3': train is a section; set one of its keys, e.g. --set train.epochs=..."


def test_a_monitor_the_task_cannot_give_is_refused_before_a_run():
    with pytest.raises(ParameterError) as caught:
        load(sets=["data.task=regression", "train.monitor=val_accuracy"], root=ROOT)
    assert str(caught.value) == (
        "train.monitor in --set train.monitor=val_accuracy: val_accuracy needs class labels, and data.task in "
        "--set data.task=regression is regression; watch val_loss"
    )


def test_a_source_mapping_that_is_not_yaml_is_one_line():
    with pytest.raises(ParameterError) as caught:
        load(sets=['data.source={url: "sqlite:///x.db", table: iris'], root=ROOT)
    assert str(caught.value).startswith("data.source '{url: \"sqlite:///x.db\", table: iris' is not a valid mapping (")
    assert load(sets=["data.source={url: 'sqlite:///x.db', table: iris}"], root=ROOT)["data.source"] == {
        "url": "sqlite:///x.db",
        "table": "iris",
    }


def test_every_layer_file_in_the_repo_is_valid():
    for path in sorted((ROOT / "parameters").glob("*.yaml")):
        load([ROOT / "parameters" / "default.yaml", path])


def test_section_and_nested():
    params = load(root=ROOT)
    assert params.section("validate") == {"atol": 1e-4, "rtol": 1e-3, "min_agreement": 0.999}
    assert params.nested()["train"]["model"] == "auto"


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


@pytest.mark.parametrize(
    "raw, key, expected",
    [
        ("1e-3", "train.lr", 1e-3),
        ("1e6", "validate.rtol", 1e6),
        ("1.0e6", "validate.rtol", 1e6),
        ("1E-3", "validate.atol", 1e-3),
        ("-2.5e-4", "train.clip_grad_norm", None),  # a number, then refused as negative
        ("1e2", "train.epochs", 100),
        ("1.0E+2", "train.epochs", 100),
    ],
)
def test_exponent_numbers_are_numbers_on_set_and_in_files(tmp_path, raw, key, expected):
    section, leaf = key.split(".")
    path = write(tmp_path, "exp.yaml", f"{section}:\n  {leaf}: {raw}\n")
    for kwargs in ({"sets": [f"{key}={raw}"], "root": ROOT}, {"files": [path]}):
        if expected is None:
            with pytest.raises(ParameterError, match=r"must be between 0 and 1000000, got -0.00025"):
                load(**kwargs)
            continue
        value = load(**kwargs)[key]
        assert value == expected and type(value) is type(expected)


def test_an_integer_key_refuses_a_fraction_in_exponent_form():
    with pytest.raises(
        ParameterError, match=r"^train.epochs in --set train.epochs=2.5e0: expected an integer, got 2.5"
    ):
        load(sets=["train.epochs=2.5e0"], root=ROOT)


@pytest.mark.parametrize(
    "raw, shown",
    [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("inf", "inf"), ("nan", "nan"), ("1e400", "inf")],
)
@pytest.mark.parametrize("key", ["train.lr", "train.clip_grad_norm", "train.epochs", "seed"])
def test_non_finite_numbers_are_refused_naming_key_and_origin(tmp_path, key, raw, shown):
    with pytest.raises(ParameterError) as err:
        load(sets=[f"{key}={raw}"], root=ROOT)
    assert str(err.value) == f"{key} in --set {key}={raw}: must be a finite number, got {shown}"
    *parents, leaf = key.split(".")
    path = write(tmp_path, "inf.yaml", "".join(f"{p}:\n  " for p in parents) + f"{leaf}: {raw}\n")
    with pytest.raises(ParameterError, match=rf"^{key} in {path}: must be a finite number, got {shown}$"):
        load([path])


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1e10"])
def test_seed_must_fit_numpy(seed):
    with pytest.raises(ParameterError, match=rf"^seed in --set seed={seed}: must be between 0 and 4294967295"):
        load(sets=[f"seed={seed}"], root=ROOT)
    assert load(sets=["seed=4294967295"], root=ROOT)["seed"] == 2**32 - 1


@pytest.mark.parametrize(
    "name, data",
    [
        ("plot.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
        ("params.yaml.gz", gzip.compress(b"train: {epochs: 3}\n")),
        ("latin1.yaml", "train:\n  model: caf\xe9\n".encode("latin-1")),
    ],
)
def test_a_binary_parameter_file_is_one_line(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ParameterError, match=rf"^parameter file {path} is not a text file .*give -p a YAML"):
        load([path])


def test_a_folder_as_parameter_file_is_one_line(tmp_path):
    with pytest.raises(ParameterError, match=rf"^parameter file {tmp_path} is a folder; give -p a YAML file"):
        load([tmp_path])


def _stored_run() -> dict:
    """What a run started at train.epochs=40 recorded."""
    return {**load(root=ROOT).values, "train.epochs": 40, "store": "/elsewhere", "db": "sqlite:///x.db"}


def test_resume_ignores_the_implicit_default_yaml():
    given = load(sets=["store=/s", "db=sqlite:///t.db"], root=ROOT)
    assert given.origin["train.epochs"].endswith("default.yaml") and given["train.epochs"] == 30
    resumed = of_run("r1", _stored_run(), given)
    assert resumed["train.epochs"] == 40 and resumed.origin["train.epochs"] == "run r1"
    assert of_run("r1", _stored_run(), load(root=ROOT))["train.epochs"] == 40


def test_resume_refuses_what_the_user_gave_explicitly(tmp_path):
    with pytest.raises(ParameterError, match=r"^train.epochs in --set train.epochs=41: 41 differs from run r1's 40"):
        of_run("r1", _stored_run(), load(sets=["train.epochs=41"], root=ROOT))
    named = load([ROOT / "parameters" / "default.yaml"])  # named with -p: its 30 is an override
    with pytest.raises(ParameterError, match=r"train.epochs in .*default.yaml: 30 differs from run r1's 40"):
        of_run("r1", _stored_run(), named)
    layer = write(tmp_path, "same.yaml", "train: {epochs: 40}\n")
    assert of_run("r1", _stored_run(), load([layer], ["train.epochs=40"]))["train.epochs"] == 40


def test_steps_of_a_new_run_need_their_inputs():
    order = [s.name for s in STEPS]
    assert steps_problem(["prepare", "train", "export", "validate"], order) is None
    assert steps_problem(["score"], order) is None and steps_problem(["prepare"], order) is None
    assert steps_problem(["train"], order) == (
        "train needs prepare's outputs of the same run; add prepare (e.g. --steps prepare,train), "
        "or score an earlier run's model with --steps score"
    )
    assert steps_problem(["validate", "score"], order).startswith(
        "validate needs export's outputs of the same run; add prepare, train, export "
        "(e.g. --steps prepare,train,export,validate,score)"
    )
    assert steps_problem(["prepare", "export"], order).startswith("export needs train's outputs")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.max_memory_gb=1e300", "between 0 and 1048576"),  # was an OverflowError inside the train step
        ("train.epochs=1e26", "greater than 0 and at most 100000"),
        ("data.max_categories=1e30", "greater than 0 and at most 10000"),
        ("score.batch_size=1e24", "greater than 0 and at most 10000000"),
        ("serve.max_body_mb=1e12", "greater than 0 and at most 4096"),
    ],
)
def test_numbers_beyond_any_sane_value_are_refused_before_a_run(item, message):
    key = item.split("=")[0]
    with pytest.raises(ParameterError, match=rf"^{key} in --set {key}=\S+: must be {message}, got ") as err:
        load(sets=[item])
    assert "\n" not in str(err.value)


def test_every_number_in_the_schema_has_an_upper_bound():
    from workbench.config.schema import _FIELDS, KEYS, _bounds

    numbers = [k.key for k in KEYS if k.kind in ("int", "float")]
    unbounded = [key for key in numbers if not {"le", "lt"} & set(_bounds(_FIELDS[key]))]
    assert numbers and unbounded == []
