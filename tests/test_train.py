from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.config.schema import TrainParams
from workbench.errors import ModelError, StoreError
from workbench.ml.models import load_model
from workbench.ml.training.checkpoint import CHECKPOINT, SET_ASIDE
from workbench.ml.training.device import amp_dtype, choose_device, environment
from workbench.ml.training.job import WORKER_ERROR, TrainResult, plot_history, raise_worker_error
from workbench.ml.training.loop import FitSettings, Trainer, chance_accuracy
from workbench.ml.training.verdict import is_near_chance, training_warnings
from workbench.stages.train import train_model

PREPARED = ("train.parquet", "val.parquet", "schema.json", "encoding.json")


def _fresh_run(stage_ctx_factory, run_id: str, interactive: bool = True):
    """A train context for a new run holding the shared run's prepared splits.

    A run the DB has not seen counts as interactive; ``interactive=False`` stands for `workbench run`.
    """
    ctx = stage_ctx_factory("train", run_id=run_id)
    for name in PREPARED:
        ctx.store.write_bytes(ctx.key(name, "prepare"), stage_ctx_factory("prepare").load(name, "prepare"))
    return dataclasses.replace(ctx, interactive=interactive)


def test_device_choice_on_a_cpu_machine():
    assert choose_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match=r"train\.device 'cuda': no CUDA device is visible here; use auto or cpu"):
            choose_device("cuda")
    assert amp_dtype(torch.device("cpu"), True) is None
    assert environment(torch.device("cpu"), None)["amp"] == "off"


def test_training_saves_model_config_checkpoint_and_metrics(trained, stage_ctx_factory):
    result, _ = trained
    ctx = stage_ctx_factory("train")
    assert len(result.history) == 3 and result.history.lr.iloc[0] > result.history.lr.iloc[-1]
    assert result.metrics["val_accuracy"] > 0.85
    checkpoint = torch.load(io.BytesIO(ctx.load(CHECKPOINT, "train")), weights_only=False)
    assert checkpoint["config"] == result.config and len(checkpoint["trainer"]["history"]) == 3
    state = torch.load(io.BytesIO(ctx.load("model.pth", "train")), weights_only=True)
    assert isinstance(load_model(ctx.load_json("model_config.json", "train"), state), torch.nn.Module)
    run = ctx.tracker.get_run("unit")
    assert [p["epoch"] for p in run["history"]["val_accuracy"]] == [1, 2, 3]
    assert run["metrics"]["val_accuracy"] == result.metrics["val_accuracy"]
    assert run["metrics"]["near_chance"] == 0.0 and 0.09 < run["metrics"]["chance_accuracy"] < 0.12
    assert result.warnings == [] and "No training warnings" in result.warning_banner()._repr_html_()
    assert ctx.store.exists(ctx.key("curves.png"))
    env = ctx.load_json("environment.json", "train")
    assert {"device", "torch", "numpy", "python"} <= set(env)


def _toy(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(200, 64, generator=g), torch.randint(0, 10, (200,), generator=g)
    return (x, y), (x[:50], y[:50])


def _toy_trainer(**settings) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10)
    )
    return Trainer(model, FitSettings(**{"epochs": 6, "batch_size": 32, "lr": 0.01, "seed": 5, **settings}))


def test_same_seed_same_numbers_on_cpu():
    def once() -> list[float]:
        history = _toy_trainer().run(*_toy(), progress=False)
        return history.drop(columns="seconds").to_numpy().ravel().tolist()

    assert once() == once()


def test_resuming_from_a_checkpoint_continues_exactly():
    straight = _toy_trainer().run(*_toy(), progress=False)

    first = _toy_trainer()
    saved = []
    first.run(*_toy(), progress=False, on_epoch=lambda epoch, row: saved.append(io.BytesIO(_bytes(first.state_dict()))))
    resumed = _toy_trainer()
    resumed.load_state_dict(torch.load(saved[2], weights_only=False))  # as if killed during epoch 4
    assert resumed.epoch == 3
    history = resumed.run(*_toy(), progress=False)
    columns = ["epoch", "lr", "train_loss", "val_loss", "val_accuracy"]
    assert history[columns].to_numpy().tolist() == straight[columns].to_numpy().tolist()


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_early_stopping_keeps_the_best_weights():
    trainer = _toy_trainer(epochs=40, lr=0.05, patience=2)
    history = trainer.run(*_toy(), progress=False)
    assert len(history) < 40 and trainer.stale == 2
    best = history.val_loss.min()
    trainer.model.eval()
    (xv, yv) = _toy()[1]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(trainer.model(xv), yv).item()
    assert loss == pytest.approx(best, rel=1e-5)


def test_gradient_clipping_bounds_each_step():
    trainer = _toy_trainer(epochs=1, batch_size=200, lr=1.0, clip_grad_norm=1e-3)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.run(*_toy(), progress=False)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(trainer.model.parameters(), before, strict=True)))
    # Adam normalises the step size, so check the clip through the gradient itself
    assert moved > 0
    grads = torch.sqrt(sum((p.grad**2).sum() for p in trainer.model.parameters()))
    assert grads <= 1e-3 * 1.01


def test_workbench_run_refuses_a_checkpoint_from_another_config(stage_ctx_factory, trained):
    ctx = _fresh_run(stage_ctx_factory, "mismatch", interactive=False)
    ctx.store.write_bytes(ctx.key(CHECKPOINT), stage_ctx_factory("train").load(CHECKPOINT, "train"))
    with pytest.raises(
        ModelError,
        match=r"was written with different train\.depth, train\.epochs, train\.model, train\.width; start a new",
    ):
        train_model(ctx, TrainParams(model="mlp", epochs=5, batch_size=64, device="cpu", amp=False), seed=0)
    assert not ctx.store.exists(ctx.key(SET_ASIDE))


def test_an_interactive_run_sets_a_checkpoint_from_other_settings_aside(stage_ctx_factory, trained, capsys):
    """JupyterLab, run id dev: change train.epochs, rerun the notebook, and it trains afresh."""
    ctx = _fresh_run(stage_ctx_factory, "lab", interactive=True)
    old = stage_ctx_factory("train").load(CHECKPOINT, "train")  # 3 epochs of cnn
    ctx.store.write_bytes(ctx.key(CHECKPOINT), old)
    for epoch in (1, 2, 3):  # the curves of the earlier training
        ctx.log_metrics({"val_accuracy": 0.5}, epoch=epoch)
    result = train_model(ctx, TrainParams(epochs=2, batch_size=64, device="cpu", amp=False), seed=0)
    said = capsys.readouterr().out
    assert [p["epoch"] for p in ctx.tracker.get_run("lab")["history"]["val_accuracy"]] == [1, 2]
    assert f"checkpoint {ctx.store.uri(ctx.key(CHECKPOINT))} was written with different train.epochs; " in said
    assert "training afresh" in said
    assert result.resumed_from == 0 and list(result.history.epoch) == [1, 2]
    assert ctx.store.read_bytes(ctx.key(SET_ASIDE)) == old
    assert len(torch.load(io.BytesIO(ctx.load(CHECKPOINT, "train")), weights_only=False)["trainer"]["history"]) == 2
    # the same settings again continue from the new checkpoint rather than training once more
    again = train_model(ctx, TrainParams(epochs=2, batch_size=64, device="cpu", amp=False), seed=0)
    said = capsys.readouterr().out
    assert "training afresh" not in said and "training is done: this run's checkpoint is at epoch 2 of 2" in said
    assert list(again.history.epoch) == [1, 2]  # what the training above recorded, nothing trained again


@pytest.mark.parametrize("interactive", [True, False])
@pytest.mark.parametrize("content", ["truncated", "half", "foreign"])
def test_a_corrupt_checkpoint_is_unreadable(stage_ctx_factory, trained, content, interactive):
    good = stage_ctx_factory("train").load(CHECKPOINT, "train")
    data = {
        "truncated": b"truncated",
        "half": good[: len(good) // 2],
        "foreign": stage_ctx_factory("train").load("model.pth", "train"),  # a state_dict, not a checkpoint
    }[content]
    ctx = _fresh_run(stage_ctx_factory, f"corrupt-{content}-{interactive}", interactive)
    ctx.store.write_bytes(ctx.key(CHECKPOINT), data)
    with pytest.raises(ModelError, match=r"checkpoints/last\.pt is unreadable \(.+\); delete it to start over"):
        train_model(ctx, TrainParams(epochs=3, batch_size=64, device="cpu", amp=False), seed=0)


class _FailingReads:
    """A store whose checkpoint exists but cannot be read right now, like S3 behind a network fault."""

    def __init__(self, inner, error: Exception) -> None:
        self.inner, self.error = inner, error

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def read_bytes(self, key: str) -> bytes:
        if key.endswith(CHECKPOINT):
            raise self.error
        return self.inner.read_bytes(key)


@pytest.mark.parametrize(
    "error",
    [
        StoreError("s3 endpoint http://127.0.0.1:9 cannot be reached; check AWS_ENDPOINT_URL"),
        PermissionError(13, "Permission denied"),
    ],
)
def test_a_checkpoint_the_store_cannot_read_is_not_called_unreadable(stage_ctx_factory, trained, error):
    """Advising to delete a good checkpoint over a network fault would throw training away."""
    ctx = _fresh_run(stage_ctx_factory, f"unreachable-{type(error).__name__}", interactive=False)
    ctx.store.write_bytes(ctx.key(CHECKPOINT), stage_ctx_factory("train").load(CHECKPOINT, "train"))
    ctx = dataclasses.replace(ctx, store=_FailingReads(ctx.store, error))
    with pytest.raises(type(error)) as caught:
        train_model(ctx, TrainParams(epochs=3, batch_size=64, device="cpu", amp=False), seed=0)
    assert caught.value is error


BLOWS_UP = """
import torch
from torch import nn


class Net(nn.Module):
    \"\"\"Logits past float32's range in training: what a far too high learning rate leads to.\"\"\"

    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * (float("inf") if self.training else 1.0)
"""


def test_a_diverging_run_stops_before_any_nan_is_recorded(stage_ctx_factory, trained, tmp_path, monkeypatch):
    (tmp_path / "blowsup.py").write_text(BLOWS_UP)
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = _fresh_run(stage_ctx_factory, "diverge")
    with pytest.raises(
        ModelError,
        match=r"^training diverged at epoch 1: train loss is (nan|inf); try a lower train\.lr \(now 0\.002\)$",
    ):
        train_model(ctx, TrainParams(model="blowsup:Net", epochs=3, batch_size=64, device="cpu", amp=False), seed=0)
    run = ctx.tracker.get_run("diverge")
    assert run["metrics"] == {} and run["history"] == {}
    assert not ctx.store.exists(ctx.key(CHECKPOINT))


def test_an_inf_in_a_prepared_split_is_blamed_on_the_data(stage_ctx_factory, trained):
    ctx = _fresh_run(stage_ctx_factory, "inf-in-train")
    frame = pd.read_parquet(io.BytesIO(ctx.load("train.parquet", "prepare")))
    frame["p10"] = frame["p10"].astype("float64")
    frame.loc[3, "p10"] = 1e300  # finite, but no float32: the encoded row is inf
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    ctx.store.write_bytes(ctx.key("train.parquet", "prepare"), buf.getvalue())
    with pytest.raises(
        ModelError,
        match=r"^training stopped at epoch 1: train loss is nan because the train split has 1 row\(s\) with inf or "
        r"nan features; fix them in data\.source and rerun prepare$",
    ):
        train_model(ctx, TrainParams(epochs=2, batch_size=64, device="cpu", amp=False), seed=0)
    assert ctx.tracker.get_run("inf-in-train")["history"] == {}


def test_divergence_keeps_the_last_good_checkpoint():
    """The epoch whose loss turns non-finite never reaches the checkpoint callback."""
    trainer = _toy_trainer(epochs=5, schedule="constant")
    saved: list[int] = []

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        saved.append(epoch)
        if epoch == 2:  # from here on every step overshoots
            trainer.optimizer.param_groups[0]["lr"] = 1.0e30

    with pytest.raises(ModelError, match=r"^training diverged at epoch 3: train loss is (nan|inf); try a lower"):
        trainer.run(*_toy(), progress=False, on_epoch=on_epoch)
    assert saved == [1, 2] and len(trainer.history) == 2


def test_the_near_chance_rule():
    assert chance_accuracy(torch.tensor([0, 1, 1, 2])) == 0.5
    assert is_near_chance(0.10, 0.10) and is_near_chance(0.30, 0.10)
    assert not is_near_chance(0.40, 0.10) and not is_near_chance(0.98, 0.10)
    assert is_near_chance(0.95, 0.95) and not is_near_chance(0.99, 0.95)  # imbalance cannot hide a useless model
    assert training_warnings({"val_accuracy": 0.98, "chance_accuracy": 0.1, "near_chance": 0.0}) == []


def test_a_model_at_chance_is_flagged(stage_ctx_factory, trained):
    ctx = _fresh_run(stage_ctx_factory, "chance")
    result = train_model(
        ctx, TrainParams(epochs=1, batch_size=64, lr=10.0, device="cpu", amp=False), seed=0
    )  # finite, but learns nothing
    val_labels = torch.from_numpy(pd.read_parquet(io.BytesIO(ctx.load("val.parquet", "prepare")))["label"].to_numpy())
    expected_chance = torch.bincount(val_labels).max().item() / len(val_labels)
    metrics = ctx.tracker.get_run("chance")["metrics"]
    assert metrics["near_chance"] == 1.0 and metrics["chance_accuracy"] == pytest.approx(expected_chance)
    assert result.metrics["val_accuracy"] < 0.2
    assert len(result.warnings) == 1 and result.warnings[0].startswith(
        f"validation accuracy {result.metrics['val_accuracy']:.3f} is near chance"
    )
    banner = result.warning_banner()
    assert repr(banner).startswith("WARNING: validation accuracy") and "\n" not in repr(banner)
    assert "<b>WARNING:</b> validation accuracy" in banner._repr_html_()


def test_warnings_are_rebuilt_from_metrics_for_distributed_runs():
    metrics = {"val_accuracy": 0.1, "chance_accuracy": 0.104, "near_chance": 1.0}
    result = TrainResult(pd.DataFrame(), metrics, {}, {}, 0, training_warnings(metrics))
    assert "WARNING: validation accuracy 0.100 is near chance" in repr(result.warning_banner())


def test_a_worker_user_error_is_raised_again_by_the_launcher():
    """`train.processes: 2` fails with the message one process gives, not torchrun's ChildFailedError."""
    stderr = (
        "[rank0]: Traceback (most recent call last):\n"
        f"[rank0]: {WORKER_ERROR}ModelError: training diverged at epoch 1: train loss is nan; try a lower train.lr\n"
        f"[rank1]: {WORKER_ERROR}ModelError: training diverged at epoch 1: train loss is nan; try a lower train.lr\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    )
    with pytest.raises(ModelError, match=r"^training diverged at epoch 1: train loss is nan; try a lower train\.lr$"):
        raise_worker_error(stderr)
    with pytest.raises(StoreError, match=r"^artifact x not found$"):
        raise_worker_error(f"{WORKER_ERROR}StoreError: artifact x not found\n")
    raise_worker_error("RuntimeError: NCCL error\n")  # not a user error: the launcher reports it as before


def test_missing_prepared_data_is_a_clear_error(stage_ctx_factory):
    from workbench.errors import StoreError

    with pytest.raises(StoreError, match=r"prepare/encoding\.json not found"):
        train_model(
            stage_ctx_factory("train", run_id="never-prepared"),
            TrainParams(epochs=1, lr=0.01, device="cpu", amp=False),
            seed=0,
        )


@pytest.mark.e2e  # torchrun launches worker processes
def test_two_processes_reach_the_single_process_accuracy_band(trained, stage_ctx_factory):
    """torchrun with gloo on CPU: two DDP workers, rank 0 writes, same accuracy band as one process."""
    accuracy = {}
    for processes in (1, 2):
        ctx = _fresh_run(stage_ctx_factory, f"ddp-{processes}")
        result = train_model(
            ctx, TrainParams(epochs=6, batch_size=64, device="cpu", amp=False, processes=processes), seed=0
        )
        accuracy[processes] = result.metrics["val_accuracy"]
        assert result.environment["processes"] == processes and len(result.history) == 6
        assert ctx.store.exists(ctx.key("model.pth"))
    assert min(accuracy.values()) > 0.9 and abs(accuracy[1] - accuracy[2]) < 0.04, accuracy


def test_constant_schedule_and_accuracy_monitor():
    trainer = _toy_trainer(epochs=30, lr=0.05, patience=3, schedule="constant", monitor="val_accuracy")
    history = trainer.run(*_toy(), progress=False)
    assert history.lr.nunique() == 1
    assert len(history) < 30 and trainer.best == -history.val_accuracy.max()


@pytest.mark.parametrize(
    ("processes", "device", "gpus", "refused"),
    [
        (2, "cuda", 1, True),
        (2, "auto", 1, True),
        (4, "cuda:0", 2, True),
        (2, "cuda", 2, False),
        (2, "auto", 0, False),  # no GPU: auto means CPU workers over gloo
        (3, "cpu", 0, False),
        (1, "cuda", 1, False),
    ],
)
def test_more_cuda_processes_than_gpus_are_refused_before_launch(processes, device, gpus, refused):
    from workbench.ml.training.device import check_processes

    if refused:
        with pytest.raises(ModelError, match=rf"train.processes {processes}: only {gpus} CUDA device\(s\) visible"):
            check_processes(processes, device, gpus)
    else:
        check_processes(processes, device, gpus)


RANK_ONE_FAILS = '''
import os

from torch import nn


class Net(nn.Module):
    """Trains on rank 0 and breaks on rank 1, as a bug or a GPU fault in one worker would."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.body = nn.Linear(in_features, num_classes)

    def forward(self, x):
        if os.environ.get("RANK") == "1" and self.training:  # past the output check, in the first step
            raise RuntimeError("boom on rank 1")
        return self.body(x)
'''


@pytest.mark.e2e  # torchrun launches worker processes
def test_a_failing_worker_is_named_with_its_own_error(trained, stage_ctx_factory, tmp_path, monkeypatch):
    """Not torchrun's empty ChildFailedError: the rank that failed and the first line of its error."""
    (tmp_path / "rankone.py").write_text(RANK_ONE_FAILS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    ctx = _fresh_run(stage_ctx_factory, "ddp-rank-one-fails")
    params = TrainParams(model="rankone:Net", epochs=1, batch_size=64, device="cpu", amp=False, processes=2)
    with pytest.raises(ModelError) as failed:
        train_model(ctx, params, seed=0)
    assert str(failed.value) == "distributed training with 2 processes failed: rank 1: RuntimeError: boom on rank 1"


def test_a_worker_killed_without_a_word_is_named_from_torchruns_summary():
    from workbench.ml.training.job import failed_rank

    summary = (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "workbench.run.train_worker FAILED\n"
        "------------------------------------------------------------\n"
        "Root Cause (first observed failure):\n"
        "[0]:\n"
        "  time      : 2026-11-24_22:50:01\n"
        "  host      : node-1\n"
        "  rank      : 1 (local_rank: 1)\n"
        "  exitcode  : -9 (pid: 4242)\n"
    )
    assert failed_rank(summary) == "rank 1: the worker died (killed by signal 9 (out of memory?)); its output is above"
    assert failed_rank("ChildFailedError:\n") == "see the output above"


@pytest.mark.parametrize(
    ("requested", "device", "clip", "fp16", "world", "captured", "says"),
    [
        ("off", "cuda", 0.0, False, 1, False, "train.compile is off"),
        ("on", "cpu", 0.0, False, 1, False, "off on CPU"),
        ("on", "cuda", 0.0, False, 1, True, "captured in a CUDA graph"),
        ("on", "cuda", 1.0, False, 1, False, "clip_grad_norm"),
        ("on", "cuda", 0.0, True, 1, False, "fp16 loss scaling"),
        ("on", "cuda", 0.0, False, 2, False, "DistributedDataParallel"),
    ],
)
def test_when_the_training_step_is_captured(requested, device, clip, fp16, world, captured, says):
    from workbench.ml.training.graphs import capture_plan

    plan = capture_plan(requested, torch.device(device), clip, fp16, world)
    assert plan.captured is captured and says in plan.reason


def test_full_batches_replay_and_the_rest_runs_eagerly():
    from workbench.ml.training.graphs import split_batches

    assert split_batches(1257, 256) == (4, 233) and split_batches(1024, 256) == (4, 0)


def test_the_schedule_reaches_a_captured_step_through_a_device_tensor():
    """A replayed graph reads the learning rate from a tensor; every schedule step must update it."""
    from workbench.ml.training.graphs import schedule_on_device
    from workbench.ml.training.loop import _portable

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    sync = schedule_on_device(optimizer)
    rate = optimizer.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor) and rate.item() == pytest.approx(0.1)
    for _ in range(2):
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
        schedule.step()
        sync()
    assert optimizer.param_groups[0]["lr"] is rate  # the very tensor a graph would hold
    assert rate.item() == pytest.approx(0.05)  # cosine half-way from 0.1 to 0
    saved = _portable(optimizer.state_dict())
    assert saved["param_groups"][0]["lr"] == pytest.approx(0.05) and isinstance(saved["param_groups"][0]["lr"], float)


def test_compile_on_a_cpu_trains_eagerly_and_says_why(trained, stage_ctx_factory, capsys):
    ctx = _fresh_run(stage_ctx_factory, "compile-on-cpu", interactive=False)
    result = train_model(ctx, TrainParams(epochs=1, batch_size=64, device="cpu", compile="on"), seed=0)
    assert "train.compile: off on CPU" in capsys.readouterr().out
    assert result.environment["step"] == "eager" and len(result.history) == 1


def test_a_regression_learns_a_number_and_reports_its_errors_in_its_units():
    """MSE on the standardised target; RMSE and MAE back in the target's units, R² on top."""
    from workbench.errors import ParameterError
    from workbench.ml.training.objective import Objective

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=600)).astype(np.float32)
    scale = float(y.std()) * 1000  # as if the target were in grams and the model saw kilograms
    objective = Objective(regression=True, scale=scale)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    settings = FitSettings(epochs=30, batch_size=32, lr=0.01, seed=0)
    standardised = (y - y.mean()) / y.std()
    train = (torch.from_numpy(x[:500]), torch.from_numpy(standardised[:500]))
    val = (torch.from_numpy(x[500:]), torch.from_numpy(standardised[500:]))
    history = Trainer(model, settings, objective=objective).run(train, val, progress=False)
    last = history.iloc[-1]
    assert {"train_mae", "val_rmse", "val_mae", "val_r2"} <= set(history.columns)
    assert "val_accuracy" not in history and last.val_r2 > 0.95
    assert last.val_rmse == pytest.approx(np.sqrt(last.val_loss) * scale, rel=1e-5)
    assert last.val_mae < last.val_rmse < 0.25 * scale
    with pytest.raises(ParameterError, match=r"train\.monitor val_accuracy needs class labels"):
        Trainer(model, FitSettings(monitor="val_accuracy"), objective=objective)


def test_the_curves_tick_whole_epochs_on_a_short_run():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.5, 0.3],
            "val_loss": [1.1, 0.6, 0.4],
            "train_accuracy": [0.5, 0.8, 0.9],
            "val_accuracy": [0.5, 0.7, 0.85],
        }
    )
    for ax in plot_history(history).axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
