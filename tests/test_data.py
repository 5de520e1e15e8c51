from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.data import load_split, plot_digits, prepare_data, stratified_split
from workbench.errors import DataError
from workbench.sources import read_source


@pytest.fixture
def digits() -> pd.DataFrame:
    return read_source("bundled:digits")


def test_bundled_digits(digits):
    assert digits.shape == (1797, 65)
    assert sorted(digits.label.unique()) == list(range(10))


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz", "d.parquet"])
def test_local_formats(tmp_path, digits, name):
    path = tmp_path / name
    digits.head(50).to_parquet(path) if name.endswith("parquet") else digits.head(50).to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_source(str(path)), digits.head(50))


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.source: no file at .*missing.csv; check the path"):
        read_source(str(tmp_path / "missing.csv"))
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match="unknown format"):
        read_source(str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="no bundled dataset 'iris'"):
        read_source("bundled:iris")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot be read"):
        read_source(str(tmp_path / "bad.parquet"))


def test_split_is_deterministic_stratified_and_disjoint(digits):
    labels = digits.label.to_numpy()
    a = stratified_split(labels, 0.15, 0.15, seed=7)
    b = stratified_split(labels, 0.15, 0.15, seed=7)
    c = stratified_split(labels, 0.15, 0.15, seed=8)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["val"], c["val"])
    everything = np.concatenate(list(a.values()))
    assert len(everything) == len(labels) == len(np.unique(everything))
    shares = pd.Series(labels[a["val"]]).value_counts(normalize=True)
    assert (shares - pd.Series(labels).value_counts(normalize=True)).abs().max() < 0.01


def test_prepare_writes_splits_and_normalisation(stage_ctx_factory):
    ctx = stage_ctx_factory("prepare", run_id="data-test")
    prepared = prepare_data(ctx, "bundled:digits", "label", 0.15, 0.15, 0)
    assert prepared.counts.rows.tolist() == [1259, 269, 269, 1797]
    assert prepared.class_balance.sum().tolist() == [1259, 269, 269]
    for name in ("train.parquet", "val.parquet", "test.parquet", "normalization.json", "schema.json"):
        assert ctx.store.exists(ctx.key(name))
    train = load_split(ctx, "train")
    assert train.x.dtype == np.float32 and train.x.shape == (1259, 64)
    assert np.abs(train.x.mean(axis=0)).max() < 1e-5
    assert ctx.tracker.get_run("data-test")["metrics"]["rows_val"] == 269
    assert plot_digits(prepared).axes


def test_prepare_rejects_bad_tables(stage_ctx_factory, tmp_path, digits):
    ctx = stage_ctx_factory("prepare", run_id="bad-data")
    with pytest.raises(DataError, match=r"data.target 'digit' is not a column of bundled:digits .*set data.target"):
        prepare_data(ctx, "bundled:digits", "digit", 0.15, 0.15, 0)
    text = digits.head(60).assign(p3="x")
    text.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(DataError, match=r"non-numeric feature columns \['p3'\]"):
        prepare_data(ctx, str(tmp_path / "text.csv"), "label", 0.15, 0.15, 0)
    holes = digits.head(60).astype({"p5": float})
    holes.loc[3, "p5"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(DataError, match=r"missing values in columns \['p5'\]"):
        prepare_data(ctx, str(tmp_path / "holes.csv"), "label", 0.15, 0.15, 0)
    assert not ctx.store.exists(ctx.key("train.parquet"))
