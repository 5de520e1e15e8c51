from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from workbench.errors import ModelError
from workbench.ml.models import build_model, load_model, model_config


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
