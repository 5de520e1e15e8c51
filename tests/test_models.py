from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from support.cli import SMALL, workbench

from workbench.errors import ModelError
from workbench.ml.models import build_model, load_model, model_config
from workbench.tracking.tracker import Tracker


@pytest.mark.parametrize("spec", ["cnn", "mlp"])
def test_builtin_models_map_rows_to_logits(spec):
    model = build_model(model_config(spec, 64, 10))
    assert model(torch.zeros(5, 64)).shape == (5, 10)


def test_cnn_needs_square_inputs():
    with pytest.raises(ModelError, match=r"needs square images .* got 30 features; use 'mlp'"):
        build_model(model_config("cnn", 30, 3))


def test_user_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Tiny(nn.Module):
                def __init__(self, in_features, num_classes):
                    super().__init__()
                    self.fc = nn.Linear(in_features, num_classes)

                def forward(self, x):
                    return self.fc(x)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(model_config("my_models:Tiny", 64, 10))
    assert model(torch.zeros(2, 64)).shape == (2, 10)
    with pytest.raises(ModelError, match=r"has no nn\.Module subclass named 'Huge'"):
        build_model(model_config("my_models:Huge", 64, 10))
    sys.modules.pop("my_models", None)


def test_user_model_that_does_not_import():
    with pytest.raises(ModelError, match=r"train.model 'nowhere.models:Net': cannot import 'nowhere.models'"):
        build_model(model_config("nowhere.models:Net", 64, 10))


def test_weights_from_another_architecture_are_refused():
    mlp_state = build_model(model_config("mlp", 64, 10)).state_dict()
    with pytest.raises(ModelError, match=r"model weights do not match config 'cnn'"):
        load_model(model_config("cnn", 64, 10), mlp_state)


USER_MODELS = """
from torch import nn

class OtherSignature(nn.Module):
    def __init__(self, inputs, outputs):
        super().__init__()

class BuggyInside(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes, bias="no", nonsense=1)  # a TypeError inside
"""


def test_a_constructor_without_the_arguments_is_blamed_on_its_signature(tmp_path, monkeypatch):
    (tmp_path / "sig_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=r"'sig_models:OtherSignature': constructor must accept in_features") as caught:
        build_model(model_config("sig_models:OtherSignature", 64, 10))
    assert isinstance(caught.value.__cause__, TypeError)
    sys.modules.pop("sig_models", None)


def test_a_type_error_inside_the_constructor_is_not_blamed_on_its_signature(tmp_path, monkeypatch):
    (tmp_path / "bug_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=r"'bug_models:BuggyInside': its constructor raised TypeError") as caught:
        build_model(model_config("bug_models:BuggyInside", 64, 10))
    assert "must accept" not in str(caught.value)
    assert isinstance(caught.value.__cause__, TypeError)  # the bug's own traceback stays reachable
    assert "nonsense" in str(caught.value.__cause__)
    sys.modules.pop("bug_models", None)


OUTPUT_MODELS = """
import torch
from torch import nn

class Wide(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, 13)

    def forward(self, x):
        return self.fc(x)

class Flat(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(x).sum(1)

class Pair(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        out = self.fc(x)
        return out, out.softmax(1)

class Normed(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(self.norm(x + 5))
"""


def test_an_output_that_does_not_fit_the_task_is_refused_when_the_model_is_built(tmp_path, monkeypatch):
    """One forward before any training: 13 logits for 10 classes, one number per row for a classifier,
    a tuple, or several numbers for a regression are named with what they are and what is needed."""
    (tmp_path / "out_models.py").write_text(OUTPUT_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    refused = {
        ("Wide", 10): "forward returned shape (2, 13) for 2 rows; it must return one logit per class, shape (2, 10) "
        "for the target's 10 classes",
        ("Flat", 10): "forward returned shape (2,) for 2 rows; it must return one logit per class, shape (2, 10)",
        ("Pair", 10): "forward returned a tuple, not a tensor; return one logit per class, shape (2, 10)",
        (
            "Wide",
            1,
        ): "forward returned shape (2, 13) for 2 rows; it must return one number per row, shape (2, 1) or (2,)",
    }
    for (name, classes), message in refused.items():
        with pytest.raises(ModelError) as caught:
            build_model(model_config(f"out_models:{name}", 64, classes))
        assert str(caught.value).startswith(f"train.model 'out_models:{name}': {message}"), caught.value
    assert build_model(model_config("out_models:Flat", 64, 1))(torch.zeros(3, 64)).shape == (3,)  # a regression
    torch.manual_seed(0)
    normed = build_model(model_config("out_models:Normed", 64, 10))
    assert normed.training and normed.norm.running_mean.abs().max() == 0  # the check moved no statistics
    sys.modules.pop("out_models", None)


@pytest.mark.e2e
def test_a_wrong_output_width_stops_the_train_step_before_an_epoch(place, tmp_path):
    (tmp_path / "out_models.py").write_text(OUTPUT_MODELS)
    result = workbench(
        "run", "--steps", "prepare,train", *place.sets(*SMALL, "train.model=out_models:Wide"),
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: step train failed: ModelError: train.model 'out_models:Wide': forward returned shape (2, 13) for 2 "
        "rows; it must return one logit per class, shape (2, 10) for the target's 10 classes"
    ), result.stderr
    [run] = Tracker(place.db).list_runs()
    assert not Tracker(place.db).get_run(run["id"])["history"]  # not one epoch trained
