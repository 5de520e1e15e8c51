from __future__ import annotations

import io

import pytest
import torch

from workbench.errors import ModelError
from workbench.models import load_model
from workbench.train import amp_dtype, choose_device, environment, fit, train_model


def test_device_choice_on_a_cpu_machine():
    assert choose_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match=r"train\.device 'cuda': no CUDA device is visible here; use auto or cpu"):
            choose_device("cuda")
    assert amp_dtype(torch.device("cpu"), True) is None
    assert environment(torch.device("cpu"), None)["amp"] == "off"


def test_training_saves_model_config_checkpoints_and_metrics(trained, stage_ctx_factory):
    result, _ = trained
    ctx = stage_ctx_factory("train")
    assert len(result.history) == 3 and result.history.lr.iloc[0] > result.history.lr.iloc[-1]
    assert result.metrics["val_accuracy"] > 0.85
    for epoch in (1, 2, 3):
        checkpoint = torch.load(io.BytesIO(ctx.load(f"checkpoints/epoch_{epoch:03d}.pt", "train")), weights_only=True)
        assert checkpoint["epoch"] == epoch and checkpoint["config"] == result.config
    state = torch.load(io.BytesIO(ctx.load("model.pth", "train")), weights_only=True)
    assert isinstance(load_model(ctx.load_json("model_config.json", "train"), state), torch.nn.Module)
    run = ctx.tracker.get_run("unit")
    assert [p["epoch"] for p in run["history"]["val_accuracy"]] == [1, 2, 3]
    assert run["metrics"]["val_accuracy"] == result.metrics["val_accuracy"]
    assert ctx.store.exists(ctx.key("curves.png"))


def test_same_seed_same_numbers_on_cpu():
    def once() -> list[float]:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(200, 64, generator=g), torch.randint(0, 10, (200,), generator=g)
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        history = fit(model, (x, y), (x[:50], y[:50]), epochs=3, batch_size=32, lr=0.01, seed=5, progress=False)
        return history.drop(columns="seconds").to_numpy().ravel().tolist()

    assert once() == once()


def test_missing_prepared_data_is_a_clear_error(stage_ctx_factory):
    from workbench.errors import StoreError

    with pytest.raises(StoreError, match=r"prepare/schema\.json not found"):
        train_model(stage_ctx_factory("train", run_id="never-prepared"), "cnn", 1, 32, 0.01, "cpu", False, 0)
