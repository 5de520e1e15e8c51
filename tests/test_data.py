from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
from support.cli import workbench

from workbench.config.schema import DataParams
from workbench.errors import DataError
from workbench.ml.dataset import load_split
from workbench.ml.splits import stratified_split
from workbench.stages.prepare_data import image_side, plot_digits, plot_sample, prepare_data
from workbench.storage.sources import read_source


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


def test_prepare_writes_splits_and_the_encoding(stage_ctx_factory):
    ctx = stage_ctx_factory("prepare", run_id="data-test")
    prepared = prepare_data(ctx, DataParams(), seed=0)
    assert prepared.counts.rows.tolist() == [1259, 269, 269, 1797]
    assert prepared.class_balance.sum().tolist() == [1259, 269, 269]
    for name in ("train.parquet", "val.parquet", "test.parquet", "encoding.json", "schema.json"):
        assert ctx.store.exists(ctx.key(name))
    train = load_split(ctx, "train")
    assert train.x.dtype == np.float32 and train.x.shape == (1259, 64)
    assert np.abs(train.x.mean(axis=0)).max() < 1e-5
    assert ctx.tracker.get_run("data-test")["metrics"]["rows_val"] == 269
    assert plot_digits(prepared).axes


def test_prepare_rejects_bad_tables(stage_ctx_factory, tmp_path, digits):
    ctx = stage_ctx_factory("prepare", run_id="bad-data")
    with pytest.raises(
        DataError, match=r"data.source bundled:digits: data.target 'digit' is not a column .*set data.target"
    ):
        prepare_data(ctx, DataParams(target="digit"), seed=0)
    ids = digits.head(300).assign(customer=[f"C{i:05d}" for i in range(300)])
    ids.to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(DataError, match=r"column 'customer' looks like an identifier .* add it to data.drop"):
        prepare_data(ctx, DataParams(source=str(tmp_path / "ids.csv")), seed=0)
    with pytest.raises(DataError, match=r"data.drop names 'client', which is not a column"):
        prepare_data(ctx, DataParams(source=str(tmp_path / "ids.csv"), drop=["client"]), seed=0)
    rare = digits.head(300).copy()
    rare.loc[5, "label"] = 42
    rare.to_csv(tmp_path / "rare.csv", index=False)
    with pytest.raises(DataError, match=r"class 42 has 1 row\(s\); each class needs 3 or more"):
        prepare_data(ctx, DataParams(source=str(tmp_path / "rare.csv")), seed=0)
    assert not ctx.store.exists(ctx.key("train.parquet"))


def test_a_date_that_does_not_parse_is_refused_in_whichever_split_it_lands(stage_ctx_factory, tmp_path, digits):
    """The encoding is fitted on training rows only; a bad date among the validation or test rows is
    refused by prepare all the same, not later by training or scoring."""
    ctx = stage_ctx_factory("prepare", run_id="bad-date")
    dated = digits.head(300).assign(when=pd.date_range("2024-01-01", periods=300).strftime("%Y-%m-%d"))
    for row in range(1, 300, 30):
        dated.assign(when=dated.when.where(dated.index != row, "2024-13-45")).to_csv(tmp_path / "d.csv", index=False)
        with pytest.raises(DataError, match=r"^data.source .*d\.csv: column 'when' holds dates, but '2024-13-45'"):
            prepare_data(ctx, DataParams(source=str(tmp_path / "d.csv")), seed=0)
    assert not ctx.store.exists(ctx.key("train.parquet"))


def test_gaps_are_imputed_and_rows_without_a_target_dropped(stage_ctx_factory, tmp_path, digits):
    holes = digits.head(300).astype({"p5": float, "label": float})
    holes.loc[3, "p5"] = np.nan
    holes.loc[[7, 9], "label"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    ctx = stage_ctx_factory("prepare", run_id="holes")
    prepared = prepare_data(ctx, DataParams(source=str(tmp_path / "holes.csv"), drop=["p0"]), seed=0, progress=False)
    assert prepared.counts.rows.iloc[-2:].tolist() == [298, 2]  # total, dropped: no target
    assert prepared.task.task == "classification" and prepared.task.classes == list(range(10))
    assert "p0" not in prepared.features and "p5:missing" in prepared.encoding.features
    train = load_split(ctx, "train")
    assert train.x.shape[1] == len(prepared.encoding.features) and np.isfinite(train.x).all()


def one_line(error: pytest.ExceptionInfo) -> str:
    """The message, checked to be the single line the CLI prints."""
    message = str(error.value)
    assert "\n" not in message
    return message


def test_prepare_summarises_the_training_split(stage_ctx_factory, digits):
    """The summary and histograms are those of the whole training split, counted while streaming."""
    ctx = stage_ctx_factory("prepare", run_id="summary")
    prepared = prepare_data(ctx, DataParams(), seed=0, chunk_rows=300, progress=False)
    train = digits.iloc[stratified_split(digits.label.to_numpy(), 0.15, 0.15, 0)["train"]].drop(columns="label")
    summary = prepared.feature_summary
    assert summary.index.tolist() == prepared.features and summary["count"].eq(1259).all()
    assert np.allclose(summary["mean"], train.mean()) and np.allclose(summary["std"], train.std(ddof=0))
    assert summary["min"].tolist() == train.min().tolist() and summary["max"].tolist() == train.max().tolist()
    assert list(prepared.histograms) == prepared.features[:16]
    bins, edges = prepared.histograms["p10"]
    assert bins.sum() == 1259 and edges.tolist() == [v - 0.5 for v in range(18)]  # one bin per pixel value 0..16
    assert bins[3] == (train.p10 == 3).sum()
    assert image_side(prepared) == 8
    assert plot_sample(prepared).axes[0].images  # digits: drawn as images


def _few_features(digits: pd.DataFrame) -> pd.DataFrame:
    """A non-square table: ten measurements with decimals, and the label."""
    return digits[[f"p{i}" for i in range(10, 20)]].div(16).round(3).assign(label=digits.label)


def test_a_semicolon_csv_with_decimal_commas_prepares(stage_ctx_factory, tmp_path, digits):
    """As spreadsheets save it in many locales: detected from the header, read like the comma CSV."""
    table = _few_features(digits)
    table.to_csv(tmp_path / "comma.csv", index=False)
    table.to_csv(tmp_path / "semi.csv", sep=";", decimal=",", index=False)
    pd.testing.assert_frame_equal(read_source(str(tmp_path / "semi.csv")), table)
    comma = prepare_data(stage_ctx_factory("prepare", "comma"), DataParams(source=str(tmp_path / "comma.csv")), seed=0)
    ctx = stage_ctx_factory("prepare", "semi")
    semi = prepare_data(ctx, DataParams(source=str(tmp_path / "semi.csv")), seed=0, progress=False)
    assert semi.features == [f"p{i}" for i in range(10, 20)]
    pd.testing.assert_frame_equal(semi.feature_summary, comma.feature_summary)
    assert ctx.load_frame("train.parquet", "prepare").p12.dtype == float


def test_plot_sample_draws_distributions_for_a_plain_table(stage_ctx_factory, tmp_path, digits):
    """Ten features are no image: a grid of histograms instead of the error plot_digits gives."""
    _few_features(digits).to_csv(tmp_path / "ten.csv", index=False)
    prepared = prepare_data(stage_ctx_factory("prepare", "ten"), DataParams(source=str(tmp_path / "ten.csv")), seed=0)
    assert image_side(prepared) is None
    fig = plot_sample(prepared)
    drawn = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title() for ax in drawn] == prepared.features
    with pytest.raises(DataError, match="10 features do not form a square image"):
        plot_digits(prepared)


def test_penguins_prepare_and_show_their_distributions(stage_ctx_factory, tmp_path):
    """A real non-square table from an installed package: 5 measurements of 3 penguin species."""
    penguins = pytest.importorskip("palmerpenguins").load_penguins()
    numeric = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
    penguins[[*numeric, "species"]].dropna().to_csv(tmp_path / "penguins.csv", index=False)
    ctx = stage_ctx_factory("prepare", "penguins")
    prepared = prepare_data(
        ctx, DataParams(source=str(tmp_path / "penguins.csv"), target="species"), seed=0, progress=False
    )
    assert prepared.features == numeric and prepared.counts.rows.iloc[-1] == 342
    assert prepared.class_balance.index.tolist() == ["Adelie", "Chinstrap", "Gentoo"]
    summary = prepared.feature_summary
    assert summary.loc["body_mass_g", "min"] >= 2700 and summary.loc["year", "max"] == 2009
    assert prepared.histograms["year"][1].tolist() == [2006.5, 2007.5, 2008.5, 2009.5]
    fig = plot_sample(prepared)
    assert [ax.get_title() for ax in fig.axes if ax.patches] == numeric


def _corrupt_parquet(tmp_path, digits) -> str:
    """A Parquet file cut short, as an interrupted copy leaves it."""
    whole = tmp_path / "whole.parquet"
    digits.to_parquet(whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return str(cut)


def _with_ids(tmp_path, digits) -> str:
    frame = digits.head(200).assign(account=[f"A-{i}" for i in range(200)])
    frame.to_csv(tmp_path / "ids.csv", index=False)
    return str(tmp_path / "ids.csv")


def _duplicate_header(tmp_path, digits) -> str:
    text = digits.head(80).to_csv(index=False).replace("p2,", "p1,", 1).replace("p9,", "p8,", 1)
    (tmp_path / "dup.csv").write_text(text)
    return str(tmp_path / "dup.csv")


def _latin1_header(tmp_path, digits) -> str:
    frame = digits.head(80).rename(columns={"p0": "pixel_é"})
    (tmp_path / "latin.csv").write_bytes(frame.to_csv(index=False).encode("latin-1"))
    return str(tmp_path / "latin.csv")


def _latin1_values(tmp_path, digits) -> str:
    frame = digits.head(80).assign(city=["Zürich", "Köln"] * 40)
    (tmp_path / "latin-values.csv").write_bytes(frame.to_csv(index=False).encode("latin-1"))
    return str(tmp_path / "latin-values.csv")


def _day_first_dates(tmp_path, digits) -> str:
    frame = digits.head(200).assign(day=pd.date_range("2012-01-01", periods=200).strftime("%d/%m/%Y"))
    frame.to_csv(tmp_path / "dates.csv", index=False)
    return str(tmp_path / "dates.csv")


BAD_SOURCES = {
    "duplicate columns": (_duplicate_header, r"duplicate column names \['p1', 'p8'\] in the header; rename them"),
    "non-UTF-8 header": (
        _latin1_header,
        r"the header is not UTF-8 \(byte 0xe9 at offset 6\); re-save the file as UTF-8",
    ),
    "non-UTF-8 values": (
        _latin1_values,
        r"column 'city' holds text that is not UTF-8 \(b'Z\\xfcrich', byte 0xfc\); re-save the file as UTF-8$",
    ),
    "dates not ISO": (
        _day_first_dates,
        r"column 'day' holds dates written as '01/01/2012', not YYYY-MM-DD, so they read as text with a value per "
        r"row; write them as YYYY-MM-DD \(ISO 8601\), or add the column to data.drop$",
    ),
    "corrupt parquet": (_corrupt_parquet, r"cannot be read as Parquet \(.*\); is the file complete\?"),
    "identifier": (
        _with_ids,
        r"column 'account' looks like an identifier \(\d+ distinct values in \d+ rows\); add it to data.drop "
        r"\(or to data.categorical, with data.max_categories 140 or more, to keep it\)",
    ),
}


@pytest.mark.parametrize("case", BAD_SOURCES, ids=list(BAD_SOURCES))
def test_bad_sources_are_one_line_naming_the_file(stage_ctx_factory, tmp_path, digits, case):
    make, message = BAD_SOURCES[case]
    path = make(tmp_path, digits)
    ctx = stage_ctx_factory("prepare", run_id=f"bad-{case.replace(' ', '-')}")
    with pytest.raises(DataError, match=message) as caught:
        prepare_data(ctx, DataParams(source=path), seed=0, progress=False)
    assert one_line(caught).startswith(f"data.source {path}")
    assert not ctx.store.exists(ctx.key("train.parquet"))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "duplicate columns",
            "duplicate column names ['p1', 'p8'] in the header; rename them so each column is unique",
        ),
        (
            "identifier",
            "); add it to data.drop (or to data.categorical, with data.max_categories 140 or more, to keep it)",
        ),
    ],
)
def test_a_run_on_a_bad_source_ends_with_one_error_line(place, tmp_path, digits, case, expected):
    path = BAD_SOURCES[case][0](tmp_path, digits)
    result = workbench("run", "--steps", "prepare", *place.sets(f"data.source={path}"))
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: step prepare failed: DataError: data.source {path}: ") and last.endswith(expected)
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [last]


@pytest.mark.e2e
def test_a_run_prepares_a_table_that_is_no_image(place, tmp_path, digits):
    """Notebook 01 shows a summary and distributions for a ten-feature table instead of failing."""
    _few_features(digits).to_csv(tmp_path / "ten.csv", index=False)
    result = workbench("run", "--steps", "prepare", *place.sets(f"data.source={tmp_path / 'ten.csv'}"))
    assert result.code == 0, result.stderr
    run = place.store / "runs" / result.stdout.split()[1]
    schema = json.loads((run / "prepare" / "schema.json").read_text())
    assert schema["features"] == [f"p{i}" for i in range(10, 20)]
    notebook = nbformat.read(run / "01_prepare_data.ipynb", as_version=4)
    shown = notebook.cells[-1].outputs
    assert any("image/png" in o.get("data", {}) for o in shown) and any("p19" in str(o) for o in shown)


def test_silent_choices_are_said_out_loud(stage_ctx_factory, tmp_path, digits):
    """A row counter used as a feature, the target in data.drop or data.categorical, a column named as
    another's encoded feature, and 64 unrelated number columns the CNN would take as an image: each a
    NOTE line in notebook 01 (and its report page) and in schema.json; the digits themselves say nothing."""
    from palmerpenguins import load_penguins

    ctx = stage_ctx_factory("prepare", run_id="notes-test")
    assert prepare_data(ctx, DataParams(), seed=0, progress=False).notes.lines == ()
    penguins = load_penguins().reset_index(names="row").assign(**{"island=Dream": 1.0})
    penguins.to_csv(tmp_path / "penguins.csv", index=False)
    params = DataParams(source=str(tmp_path / "penguins.csv"), target="species", drop=["species"], categorical=["year"])
    notes = prepare_data(ctx, params, seed=0, progress=False).notes
    assert notes.lines == (
        "data.target 'species' is also in data.drop; the target is never a feature, so that entry is ignored",
        "column 'row' holds the whole numbers 0 to 343, one per row: a row counter or an index, used as a feature; "
        "add it to data.drop unless it means something",
        "column 'island=Dream' has the name of a feature encoded from column 'island'; the model input holds two "
        "features named 'island=Dream': rename the column",
    )
    assert repr(notes).startswith("NOTE: data.target 'species'") and "<b>NOTE:</b>" in notes._repr_html_()
    assert json.loads(ctx.store.read_bytes(ctx.key("schema.json")))["notes"] == list(notes.lines)
    measures = pd.DataFrame(
        np.random.default_rng(0).normal(size=(300, 64)), columns=[f"sensor_{c}" for c in "abcdefgh" for _ in range(8)]
    )
    measures.columns = [f"{name}{i % 8}x" for i, name in enumerate(measures.columns)]
    measures.assign(label=np.arange(300) % 3).to_csv(tmp_path / "measures.csv", index=False)
    [line] = prepare_data(ctx, DataParams(source=str(tmp_path / "measures.csv")), seed=0, progress=False).notes.lines
    assert line.startswith(
        "the 64 number columns (sensor_a0x, sensor_a1x, ...) make one 8x8 image, so train.model=auto"
    )
