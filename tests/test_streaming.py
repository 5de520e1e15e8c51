"""Splits larger than memory: the fit decision, the streamed loader's order and memory bound, and
training from it (accuracy band on digits, exact resume)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from workbench.config.schema import TrainParams
from workbench.ml.encoding import Encoding, Target, fit_encoding
from workbench.ml.streaming import (
    IN_MEMORY,
    SAFETY,
    STREAMED,
    StreamedSplit,
    fits,
    memory_budget,
    plan,
    split_bytes,
)
from workbench.ml.training.checkpoint import CHECKPOINT
from workbench.ml.training.loop import FitSettings, Trainer, evaluate
from workbench.stages.train import train_model

PREPARED = ("train.parquet", "val.parquet", "schema.json", "encoding.json")
CPU = torch.device("cpu")


def _table(path, rows: int = 1000, group: int = 100, features: int = 8, seed: int = 0):
    """A Parquet split of ``rows`` rows in row groups of ``group``; feature f0 is the row number."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    x[:, 0] = np.arange(rows)
    labels = (x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0)
    columns = {f"f{i}": x[:, i] for i in range(features)} | {"label": labels}
    pq.write_table(pa.table(columns), path, row_group_size=group)
    encoding = fit_encoding([pq.read_table(path)], target="label")
    for spec in encoding.columns:  # the identity, so a batch's f0 is its row number
        spec["mean"], spec["scale"] = 0.0, 1.0
    encoding.target = Target("label", "classification", [0, 1, 2, 3], rows, 0)
    return encoding, x, labels


def _encoded(encoding: Encoding, x: np.ndarray) -> np.ndarray:
    return encoding.apply(pd.DataFrame(x, columns=encoding.inputs))


def _split(path, encoding: Encoding, **kwargs) -> StreamedSplit:
    return StreamedSplit(path, encoding, encoding.target, CPU, **kwargs)


def test_the_fit_decision():
    assert split_bytes(1000, 64) == 1000 * (64 * 4 + 8)
    need = split_bytes(1000, 64) * SAFETY
    assert fits(1000, 64, int(need)) and not fits(1000, 64, int(need) - 1)
    assert memory_budget(2.0, CPU) == 2 * 2**30
    assert memory_budget(0, CPU) > 0  # half the host memory free now
    big = int(split_bytes(1100, 64) * SAFETY)
    assert plan((1000, 64), (100, 64), big) == {"train": IN_MEMORY, "val": IN_MEMORY}
    assert plan((1000, 64), (100, 64), big - 1) == {"train": STREAMED, "val": IN_MEMORY}
    assert plan((1000, 64), (100, 64), 10) == {"train": STREAMED, "val": STREAMED}


def test_a_streamed_epoch_takes_every_row_once_in_an_order_drawn_from_seed_and_epoch(tmp_path):
    norm, x, y = _table(tmp_path / "s.parquet")
    split = _split(tmp_path / "s.parquet", norm, shuffle_buffer=150)

    def rows(epoch, seed=0, rank=0, world=1):
        return torch.cat([xb[:, 0] for xb, _ in split.batches(32, seed=seed, epoch=epoch, rank=rank, world=world)])

    first = rows(0)
    assert sorted(first.long().tolist()) == list(range(1000))
    assert torch.equal(first, rows(0)) and not torch.equal(first, rows(1)) and not torch.equal(first, rows(0, seed=1))
    in_order = torch.cat([xb[:, 0] for xb, _ in split.batches(32)])
    assert in_order.long().tolist() == list(range(1000))  # no epoch: file order (evaluation)
    # each rank takes [rank::world] of each global batch, so the ranks together take each batch once
    global_batches = [xb[:, 0] for xb, _ in split.batches(32, epoch=2)]
    ranks = [[xb[:, 0] for xb, _ in split.batches(32, epoch=2, rank=r, world=2)] for r in (0, 1)]
    for whole, part0, part1 in zip(global_batches, *ranks, strict=True):
        assert torch.equal(whole[0::2], part0) and torch.equal(whole[1::2], part1)
    # features encoded as load_split does, labels with them
    for xb, yb in split.batches(64, epoch=3):
        ids = xb[:, 0].long().numpy()
        assert np.array_equal(xb.numpy(), _encoded(norm, x[ids])) and np.array_equal(yb.numpy(), y[ids])


def test_a_streamed_split_holds_no_more_than_its_buffer_and_prefetched_row_groups(tmp_path):
    norm, _, _ = _table(tmp_path / "s.parquet", rows=5000, group=250)
    split = _split(tmp_path / "s.parquet", norm, shuffle_buffer=300, prefetch=2, chunk_rows=100)
    for epoch in (0, 1):
        for _ in split.batches(32, epoch=epoch):
            pass
    assert split.held_rows == 0
    assert 300 <= split.peak_rows <= split.bound_rows + 32 == 300 + 4 * 100 + 32 < 5000
    # stopping early hands back what was prefetched
    next(iter(split.batches(32, epoch=0)))
    assert split.held_rows == 0


def test_streamed_evaluation_equals_the_in_memory_one(tmp_path):
    norm, x, y = _table(tmp_path / "s.parquet", rows=2500, group=300)
    split = _split(tmp_path / "s.parquet", norm)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    expected = evaluate(model, torch.from_numpy(_encoded(norm, x)), torch.from_numpy(y), 1024, None)
    assert split.evaluate(model, None) == pytest.approx(expected, rel=1e-6)
    assert split.chance_accuracy() == pytest.approx(np.bincount(y).max() / len(y))


def _trainer() -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 4))
    return Trainer(model, FitSettings(epochs=6, batch_size=32, lr=0.01, seed=5))


def test_resuming_a_streamed_run_continues_exactly(tmp_path):
    norm, _, _ = _table(tmp_path / "train.parquet", rows=600, group=64)
    _table(tmp_path / "val.parquet", rows=200, group=64, seed=1)

    def splits():
        return _split(tmp_path / "train.parquet", norm, shuffle_buffer=100), _split(tmp_path / "val.parquet", norm)

    straight = _trainer()
    expected = straight.run(*splits(), progress=False)
    first, saved = _trainer(), []
    first.run(*splits(), progress=False, on_epoch=lambda e, r: saved.append(_bytes(first.state_dict())))
    resumed = _trainer()
    resumed.load_state_dict(torch.load(io.BytesIO(saved[2]), weights_only=False))  # as if killed in epoch 4
    history = resumed.run(*splits(), progress=False)
    columns = ["epoch", "lr", "train_loss", "val_loss", "val_accuracy"]
    assert history[columns].to_numpy().tolist() == expected[columns].to_numpy().tolist()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _fresh_run(stage_ctx_factory, run_id: str, interactive: bool = False):
    ctx = stage_ctx_factory("train", run_id=run_id)
    for name in PREPARED:
        ctx.store.write_bytes(ctx.key(name, "prepare"), stage_ctx_factory("prepare").load(name, "prepare"))
    return dataclasses.replace(ctx, interactive=interactive)


def test_streamed_training_reaches_the_in_memory_band_and_resumes_exactly(
    trained, stage_ctx_factory, capsys, monkeypatch
):
    """Digits through the train step with a budget nothing fits in: both splits stream."""
    params = TrainParams(epochs=3, batch_size=64, device="cpu", amp=False, max_memory_gb=1e-6)
    ctx = _fresh_run(stage_ctx_factory, "streamed")
    result = train_model(ctx, params, seed=0)
    assert "splits: train streamed" in capsys.readouterr().out
    assert result.environment["train_data"] == STREAMED and result.environment["val_data"] == STREAMED
    assert ctx.load_json("environment.json", "train")["train_data"] == STREAMED
    in_memory, _ = trained
    assert in_memory.environment["train_data"] == IN_MEMORY
    assert result.metrics["val_accuracy"] > 0.85
    assert abs(result.metrics["val_accuracy"] - in_memory.metrics["val_accuracy"]) < 0.05

    # another run killed right after epoch 2's checkpoint, then resumed: the same weights
    killed = _fresh_run(stage_ctx_factory, "streamed-killed")
    log_metrics = type(killed).log_metrics

    def dies_after_epoch_2(self, values, epoch=None):
        log_metrics(self, values, epoch)
        if self.run_id == "streamed-killed" and epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(type(killed), "log_metrics", dies_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_model(killed, params, seed=0)
    monkeypatch.undo()
    saved = torch.load(io.BytesIO(killed.load(CHECKPOINT, "train")), weights_only=False)
    assert saved["data"]["train"] == STREAMED and len(saved["trainer"]["history"]) == 2
    again = train_model(killed, params, seed=0)
    assert again.resumed_from == 2
    columns = ["epoch", "lr", "train_loss", "val_loss", "val_accuracy"]
    assert again.history[columns].to_numpy().tolist() == result.history[columns].to_numpy().tolist()
    ours, theirs = (torch.load(io.BytesIO(c.load("model.pth", "train")), weights_only=True) for c in (ctx, killed))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
