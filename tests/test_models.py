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
