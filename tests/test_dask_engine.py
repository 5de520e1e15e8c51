"""engine: dask. The partial states prepare combines (merged in partition order they equal one pass),
then prepare and batch scoring on a LocalCluster of two worker processes against the local engine."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from support.tables import churn

from workbench.errors import DataError
from workbench.ml.encoding import EncodingFitter, TargetFitter
from workbench.ml.splits import Histograms, Moments, Ranges

CUTS = (0, 137, 138, 600, 1500)  # parts of unequal sizes, one of a single row


def _parts(table: pa.Table) -> list[pa.Table]:
    return [table.slice(a, b - a) for a, b in zip(CUTS, (*CUTS[1:], table.num_rows), strict=True)]


def _fitter() -> EncodingFitter:
    return EncodingFitter(target="churned", drop=["customer_id"], max_categories=3)


def test_merged_encoding_fits_equal_one_pass():
    table = pa.Table.from_pandas(churn(2000, seed=3), preserve_index=False)
    whole = _fitter()
    whole.add(table)
    partials = []
    for part in _parts(table):
        fitter = _fitter()
        fitter.add(part)
        partials.append(fitter)
    # a tree: (p0 + p1) + (p2 + p3), then + p4, each merge an earlier state and the one after it
    merged = partials[0].merge(partials[1]).merge(partials[2].merge(partials[3])).merge(partials[4])
    one, other = whole.finish().to_json(), merged.finish().to_json()
    for a, b in zip(one["columns"], other["columns"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("mean", "scale")} == {
            k: v for k, v in b.items() if k not in ("mean", "scale")
        }
        if "mean" in a:
            np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-12)
            np.testing.assert_allclose(b["scale"], a["scale"], rtol=1e-12)
    assert one["features"] == other["features"] and one["rows"] == other["rows"]


def test_merged_vocabulary_breaks_ties_as_one_pass():
    """Two values with the same count overall but not per part: the kept ones are those one pass keeps."""
    values = ["b", "b", "a", "c", "a", "c", "d"]
    whole = EncodingFitter(max_categories=2)
    whole.add(pa.table({"x": values}))
    first, second = EncodingFitter(max_categories=2), EncodingFitter(max_categories=2)
    first.add(pa.table({"x": values[:2]}))
    second.add(pa.table({"x": values[2:]}))
    assert first.merge(second).finish().columns[0]["values"] == whole.finish().columns[0]["values"] == ["a", "b"]


def test_merge_refuses_a_column_that_changes_type():
    first, second = EncodingFitter(), EncodingFitter()
    first.add(pa.table({"x": [1.0, 2.0]}))
    second.add(pa.table({"x": ["a", "b"]}))
    with pytest.raises(DataError, match="column 'x' changes type partway through the table"):
        first.merge(second)


def test_a_part_of_gaps_takes_the_type_of_the_next():
    first, second = EncodingFitter(), EncodingFitter()
    first.add(pa.table({"x": pa.nulls(3), "y": [1, 2, 3]}))  # a CSV block of gaps: no type yet
    second.add(pa.table({"x": ["a", "b"], "y": [4, 5]}))
    spec = first.merge(second).finish().columns[0]
    assert spec["type"] == "category" and spec["values"] == ["a", "b"] and spec["gaps"] == 3


def test_merged_target_counts_equal_one_pass():
    table = pa.Table.from_pandas(churn(2000, seed=3), preserve_index=False)
    whole = TargetFitter("churned")
    whole.add(table)
    parts = []
    for part in _parts(table):
        fitter = TargetFitter("churned")
        fitter.add(part)
        parts.append(fitter)
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    assert merged.finish() == whole.finish()
    assert merged.counts == whole.counts


def test_merged_moments_ranges_and_histograms_equal_one_pass():
    rng = np.random.default_rng(0)
    x = rng.normal(1e6, 3.0, (3000, 3))  # a large mean: a sum of squares would lose the variance
    x[rng.random(x.shape) < 0.1] = np.nan
    table = pa.table({f"c{i}": x[:, i] for i in range(3)})
    names = table.column_names
    whole_ranges = Ranges(table.schema, names)
    whole_ranges.add(table)
    whole, hist = Moments(3), Histograms(whole_ranges, names)
    whole.add(x)
    hist.add(x)
    merged, merged_ranges, merged_hist = Moments(3), Ranges(table.schema, names), Histograms(whole_ranges, names)
    for a, b in zip(CUTS, (*CUTS[1:], 3000), strict=True):
        part, ranges, counts = Moments(3), Ranges(table.schema, names), Histograms(whole_ranges, names)
        part.add(x[a:b])
        ranges.add(table.slice(a, b - a))
        counts.add(x[a:b])
        merged.merge(part)
        merged_ranges.merge(ranges)
        merged_hist.merge(counts)
    np.testing.assert_array_equal(merged.n, whole.n)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-9)
    assert (merged.low == whole.low).all() and (merged.high == whole.high).all()
    assert merged_ranges.low == whole_ranges.low and merged_ranges.high == whole_ranges.high
    for a, b in zip(merged_hist.counts, hist.counts, strict=True):
        np.testing.assert_array_equal(a, b)
