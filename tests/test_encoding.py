"""The table encoding: typed columns, a streamed fit on training rows, one JSON object applied anywhere."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from palmerpenguins import load_penguins

from workbench.errors import DataError
from workbench.ml.encoding import GAP_WORDS, Encoding, EncodingFitter, category_key, fit_encoding, fit_target
from workbench.storage.sources import iter_source


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return load_penguins()


def chunks(frame: pd.DataFrame, rows: int) -> list[pa.Table]:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return [table.slice(start, rows) for start in range(0, table.num_rows, rows)]


def one_line(excinfo: pytest.ExceptionInfo, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def round_trip(encoding: Encoding) -> Encoding:
    return Encoding.from_json(json.loads(json.dumps(encoding.to_json())))


def churn(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    charges = rng.normal(70, 20, n).round(2)
    charges[rng.random(n) < 0.1] = np.nan
    contract = rng.choice(["month-to-month", "one year", "two year"], n, p=[0.5, 0.3, 0.2]).astype(object)
    contract[rng.random(n) < 0.05] = None
    signup = pd.Timestamp("2019-01-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D")
    return pd.DataFrame(
        {
            "customer_id": [f"C{100000 + i}" for i in range(n)],
            "contract": contract,
            "monthly_charges": charges,
            "tenure_months": rng.integers(0, 72, n),
            "signup": signup.strftime("%Y-%m-%d"),
            "churned": rng.choice(["no", "yes"], n, p=[0.7, 0.3]),
        }
    )


# ---- real tables ---------------------------------------------------------------------------------


def test_penguins_are_typed_and_flag_gaps_only_where_training_had_them(penguins):
    encoding = fit_encoding(chunks(penguins, 1000), target="species")
    kinds = {c["name"]: c["type"] for c in encoding.columns}
    assert kinds == {
        "island": "category",
        "bill_length_mm": "numeric",
        "bill_depth_mm": "numeric",
        "flipper_length_mm": "numeric",
        "body_mass_g": "numeric",
        "sex": "category",
        "year": "numeric",
    }
    features = encoding.features
    assert "bill_length_mm:missing" in features and "sex=<missing>" in features  # gaps in training
    assert "year:missing" not in features and "island=<missing>" not in features  # none there
    assert features[:4] == ["island=Biscoe", "island=Dream", "island=Torgersen", "island=<other>"]
    x = encoding.apply(penguins)
    assert x.dtype == np.float32 and x.shape == (len(penguins), len(features)) and np.isfinite(x).all()
    numbers = [features.index(c) for c in ("bill_length_mm", "body_mass_g", "year")]
    assert np.allclose(x[:, numbers].mean(axis=0), 0, atol=1e-6) and np.allclose(
        x[:, numbers].std(axis=0), 1, atol=5e-3
    )  # 2 gaps imputed
    gaps = penguins["bill_length_mm"].isna().to_numpy()
    assert (x[:, features.index("bill_length_mm:missing")] == gaps).all()
    assert (x[gaps, features.index("bill_length_mm")] == 0).all()  # imputed with the training mean
    blocks = [[i for i, f in enumerate(features) if f.startswith(name + "=")] for name in ("island", "sex")]
    assert all((x[:, block].sum(axis=1) == 1).all() for block in blocks)  # one hot per row


@pytest.mark.parametrize("rows", [1, 7, 100])
def test_fitting_chunk_by_chunk_equals_fitting_at_once(penguins, rows):
    whole = fit_encoding([pa.Table.from_pandas(penguins, preserve_index=False)], target="species")
    streamed = fit_encoding(chunks(penguins, rows), target="species")
    assert streamed.features == whole.features and streamed.rows == whole.rows == len(penguins)
    for a, b in zip(streamed.columns, whole.columns, strict=True):
        assert a.keys() == b.keys() and a.get("values") == b.get("values") and a["missing"] == b["missing"]
        assert np.allclose(a.get("mean", 0), b.get("mean", 0), rtol=1e-12)
        assert np.allclose(a.get("scale", 1), b.get("scale", 1), rtol=1e-9)
    assert np.allclose(streamed.apply(penguins), whole.apply(penguins), atol=1e-6)


def test_json_round_trip_and_any_input_form_give_identical_outputs(penguins):
    encoding = fit_encoding(chunks(penguins, 50), target="species")
    expected = encoding.apply(penguins)
    again = round_trip(encoding)
    assert again.to_json() == encoding.to_json()
    table = pa.Table.from_pandas(penguins, preserve_index=False)
    records = json.loads(penguins.to_json(orient="records"))  # as a JSON request body carries them
    for rows in (penguins, table, records, penguins.to_dict("list")):
        assert np.array_equal(again.apply(rows), expected)


def test_column_order_and_extra_columns_do_not_matter(penguins):
    encoding = fit_encoding(chunks(penguins, 100), target="species")
    shuffled = penguins[list(reversed(penguins.columns))].assign(comment="new column", row=range(len(penguins)))
    assert np.array_equal(encoding.apply(shuffled), encoding.apply(penguins))
    assert np.array_equal(encoding.apply(penguins.drop(columns="species")), encoding.apply(penguins))


def test_categories_unseen_in_training_go_to_other(penguins):
    train = penguins[penguins.island != "Torgersen"]
    encoding = fit_encoding(chunks(train, 64), target="species")
    assert [f for f in encoding.features if f.startswith("island")] == [
        "island=Biscoe",
        "island=Dream",
        "island=<other>",
    ]
    x = encoding.apply(penguins)
    other = encoding.features.index("island=<other>")
    assert (x[:, other] == (penguins.island == "Torgersen").to_numpy()).all()


def test_penguin_targets_classify_species_and_regress_body_mass(penguins):
    species = fit_target(chunks(penguins, 50), "species")
    assert species.task == "classification" and species.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert species.missing == 0 and species.encode(penguins.species.head(3)).tolist() == [0, 0, 0]
    mass = fit_target(chunks(penguins, 50), "body_mass_g")
    assert (mass.task, mass.classes, mass.missing, mass.rows) == ("regression", None, 2, len(penguins))
    assert fit_target(chunks(penguins, 50), "sex").missing == 11
    encoding = fit_encoding(chunks(penguins, 50), target="body_mass_g")
    assert "body_mass_g" not in encoding.inputs and "species=Gentoo" in encoding.features
    y = mass.encode(penguins.body_mass_g)
    assert y.dtype == np.float32 and np.isnan(y).sum() == 2


def test_a_declared_categorical_number_is_one_hot_and_found_again_as_float(penguins):
    encoding = fit_encoding(chunks(penguins, 100), target="species", categorical=["year"])
    assert [f for f in encoding.features if f.startswith("year")] == [
        "year=2007",
        "year=2008",
        "year=2009",
        "year=<other>",
    ]
    frame = penguins.assign(year=penguins.year.astype(float).where(penguins.index != 0))  # a gap makes pandas floats
    x = encoding.apply(frame)
    block = [encoding.features.index(f"year={v}") for v in (2007, 2008, 2009, "<other>")]
    assert x[0, block].tolist() == [0, 0, 0, 1]  # a gap unseen in training: other
    assert np.array_equal(x[1:], encoding.apply(penguins)[1:])


def test_a_churn_csv_streamed_from_disk_refuses_the_id_until_it_is_dropped(tmp_path):
    frame = churn()
    path = tmp_path / "churn.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as excinfo:
        fit_encoding(iter_source(str(path), 64), target="churned")
    one_line(excinfo, "'customer_id'", "identifier", "data.drop")
    encoding = fit_encoding(iter_source(str(path), 64), target="churned", drop=["customer_id"])
    kinds = {c["name"]: c["type"] for c in encoding.columns}
    assert kinds == {"contract": "category", "monthly_charges": "numeric", "tenure_months": "numeric", "signup": "date"}
    assert [f for f in encoding.features if f.startswith("signup")] == [
        "signup:year",
        "signup:month",
        "signup:weekday",
        "signup:yearday",
    ]  # dates without times: no hour
    assert "contract=<missing>" in encoding.features and "monthly_charges:missing" in encoding.features
    x = round_trip(encoding).apply(frame.to_dict("records"))  # the dates arrive as text here too
    assert np.isfinite(x).all() and np.allclose(x[:, encoding.features.index("signup:year")].mean(), 0, atol=1e-6)
    target = fit_target(iter_source(str(path), 64), "churned")
    assert target.task == "classification" and target.classes == ["no", "yes"]
    with pytest.raises(DataError) as excinfo:
        fit_encoding(iter_source(str(path), 64), target="churned", categorical=["customer_id"])
    one_line(excinfo, "'customer_id'", "400 distinct values", "max_categories 50")


def test_diabetes_is_a_regression_on_numbers():
    datasets = pytest.importorskip("sklearn.datasets")
    frame = datasets.load_diabetes(as_frame=True, scaled=False).frame
    target = fit_target(chunks(frame, 100), "target")
    assert target.task == "regression" and target.missing == 0
    encoding = fit_encoding(chunks(frame, 100), target="target")
    assert encoding.features == [c for c in frame.columns if c != "target"]  # no gaps: no missing columns
    x = encoding.apply(frame)
    assert np.allclose(x.mean(axis=0), 0, atol=1e-5) and np.allclose(x.std(axis=0), 1, atol=1e-4)


def test_seattle_weather_has_a_date_and_text_labels():
    local_data = pytest.importorskip("vega_datasets").local_data
    frame = local_data.seattle_weather()
    target = fit_target(chunks(frame, 500), "weather")
    assert target.task == "classification" and target.classes == sorted(frame.weather.unique())
    encoding = fit_encoding(chunks(frame, 500), target="weather")
    assert [c["type"] for c in encoding.columns] == ["date", "numeric", "numeric", "numeric", "numeric"]
    assert encoding.features[:4] == ["date:year", "date:month", "date:weekday", "date:yearday"]
    text_dates = frame.assign(date=frame.date.dt.strftime("%Y-%m-%d"))
    assert np.allclose(encoding.apply(text_dates), encoding.apply(frame))


# ---- categories, dates and numbers in detail ---------------------------------------------------


def test_an_undeclared_text_column_keeps_its_most_frequent_values_and_other():
    values = [f"v{i:02d}" for i in range(30) for _ in range(30 - i)]  # v00 most frequent
    frame = pd.DataFrame({"level": values, "y": 1})
    encoding = fit_encoding(chunks(frame, 33), target="y", max_categories=5)
    assert encoding.features == [*(f"level=v0{i}" for i in range(5)), "level=<other>"]
    x = encoding.apply(pd.DataFrame({"level": ["v00", "v29", "never seen", None]}))
    assert x.tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]]


def test_categories_from_pandas_category_arrow_dictionary_and_booleans():
    frame = pd.DataFrame(
        {
            "tier": pd.Categorical(["gold", "silver", None, "gold"] * 20),
            "active": [True, False, True, None] * 20,
            "y": [0, 1] * 40,
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert pa.types.is_dictionary(table.schema.field("tier").type)
    encoding = fit_encoding([table], target="y")
    assert encoding.features == [
        "tier=gold",
        "tier=silver",
        "tier=<missing>",
        "tier=<other>",
        "active",
        "active:missing",
    ]
    assert [c["type"] for c in encoding.columns] == ["category", "boolean"]
    x = encoding.apply([{"tier": "silver", "active": "false"}, {"tier": "bronze", "active": True}])
    assert x[:, :4].tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]] and x[:, 5].tolist() == [0, 0]
    assert x[0, 4] < 0 < x[1, 4]


def test_timestamps_give_the_hour_and_gaps_give_a_missing_column():
    stamps = pd.Series(pd.date_range("2024-01-01 06:00", periods=100, freq="7h"))
    frame = pd.DataFrame({"at": stamps.where(stamps.index % 10 != 0), "y": 1.0})
    encoding = fit_encoding(chunks(frame, 16), target="y")
    assert encoding.features == ["at:year", "at:month", "at:weekday", "at:yearday", "at:hour", "at:missing"]
    x = encoding.apply(frame)
    assert x[0, -1] == 1 and (x[0, :-1] == 0).all() and x[1, -1] == 0
    assert np.allclose(x[1:, :-1][frame["at"].notna().to_numpy()[1:]].mean(axis=0)[[0, 4]], [0, 0], atol=0.2)


def test_non_finite_numbers_count_as_gaps_and_constant_columns_keep_a_scale_of_one():
    frame = pd.DataFrame({"x": [1.0, np.inf, 3.0, np.nan], "c": [5, 5, 5, 5], "y": 1})
    encoding = fit_encoding([frame], target="y")
    assert encoding.features == ["x", "x:missing", "c"] and encoding.columns[1]["scale"] == 1.0
    assert encoding.apply(frame).tolist() == [[-1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]]


def test_category_keys_agree_across_arrow_pandas_and_json():
    assert category_key(np.int64(3)) == category_key(3.0) == category_key(3) == "3"
    assert category_key(2.5) == "2.5" and category_key(True) == "True" and category_key("a") == "a"
    assert all(category_key(v) is None for v in (None, np.nan, pd.NA, pd.NaT, "", "  "))  # a CSV gap is ""


def test_memory_does_not_grow_with_rows():
    rng = np.random.default_rng(0)

    def stream(count: int):
        for _ in range(count):
            yield pa.table(
                {
                    "x": rng.normal(size=20_000),
                    "level": pa.array(rng.choice([f"l{i}" for i in range(40)], 20_000)),
                    "y": np.zeros(20_000),
                }
            )

    peaks = []
    for count in (3, 30):
        tracemalloc.start()
        fit_encoding(stream(count), target="y")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] + 1_000_000, peaks


# ---- targets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "task", "classes"),
    [
        ([True, False, None] * 10, "classification", [False, True]),
        ([3, 1, 2] * 10, "classification", [1, 2, 3]),
        ([3.0, 1.0, None] * 10, "classification", [1, 3]),  # integers that a gap made floats
        (list(range(30)), "regression", None),
        ([0.5, 1.5, 2.5] * 10, "regression", None),
        (["b", "a", None] * 10, "classification", ["a", "b"]),
    ],
)
def test_the_task_is_detected_from_the_target(values, task, classes):
    target = fit_target([pd.DataFrame({"t": values})], "t")
    assert (target.task, target.classes) == (task, classes)
    assert target.missing == sum(v is None for v in values)


def test_an_empty_text_target_in_a_csv_is_a_row_without_a_target(tmp_path):
    """Arrow reads an empty CSV field in a text column as "", not null: no class named ""."""
    frame = load_penguins()[["species", "bill_length_mm"]]
    frame.loc[::10, "species"] = None
    path = tmp_path / "penguins.csv"
    frame.to_csv(path, index=False)
    target = fit_target(iter_source(str(path), 100), "species")
    assert target.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert target.missing == frame.species.isna().sum() == 35
    assert (target.encode(["", " ", "Gentoo"]) == [-1, -1, 2]).all()


def test_an_explicit_task_wins_where_it_can():
    assert fit_target([pd.DataFrame({"t": list(range(30))})], "t", task="classification").classes == list(range(30))
    assert fit_target([pd.DataFrame({"t": [1, 2, 3] * 5})], "t", task="regression").task == "regression"
    with pytest.raises(DataError) as excinfo:
        fit_target([pd.DataFrame({"t": ["a", "b"]})], "t", task="regression")
    one_line(excinfo, "'t'", "text", "numeric")
    with pytest.raises(DataError) as excinfo:
        fit_target([pd.DataFrame({"t": ["a", "a"]})], "t")
    one_line(excinfo, "'t'", "at least 2")


# ---- each bad input is one line ----------------------------------------------------------------


def test_an_identifier_column_is_refused_until_dropped_or_declared():
    frame = pd.DataFrame({"order": [f"o{i}" for i in range(60)], "v": range(60), "y": 1})
    with pytest.raises(DataError) as excinfo:
        fit_encoding(chunks(frame, 25), target="y")
    one_line(excinfo, "'order'", "identifier", "60 distinct values in 60 rows", "data.drop", "data.categorical")
    assert fit_encoding([frame], target="y", drop=["order"]).features == ["v"]
    assert len(fit_encoding([frame], target="y", categorical=["order"], max_categories=60).features) == 62
    few = frame.head(49)  # under 50 rows nothing looks like an identifier yet
    assert len(fit_encoding([few], target="y").features) == 51


def test_a_number_column_with_a_few_words_is_refused_with_the_share_and_the_words(penguins, tmp_path):
    """Every 7th bill length written as 'oops' makes the CSV column text; it is refused, not one-hot
    encoded as categories of numbers, until cleaned or declared categorical. Text columns stay text."""
    frame = penguins.astype({"bill_length_mm": object})
    frame.loc[::7, "bill_length_mm"] = "oops"
    frame.loc[3::50, "bill_length_mm"] = "n.a."
    path = tmp_path / "penguins.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as excinfo:
        fit_encoding(iter_source(str(path), 100), target="species", where=f"data.source {path}: ")
    assert str(excinfo.value) == (
        f"data.source {path}: column 'bill_length_mm' holds numbers, but 56 of its 343 values (16.3%) are words: "
        "'oops', 'n.a.'; clean them (an empty field or NA is a gap), or add the column to data.categorical to keep "
        "its values as categories"
    )
    frame.loc[frame.bill_length_mm.isin(["oops", "n.a."]), "bill_length_mm"] = "NA"
    frame.to_csv(path, index=False)
    cleaned = fit_encoding(iter_source(str(path), 100), target="species")
    assert {c["name"]: c["type"] for c in cleaned.columns}["bill_length_mm"] == "numeric"
    codes = pd.DataFrame({"size": ["1", "2", "3", "XL", "XXL"] * 20, "y": [0, 1] * 50})  # mostly words: categories
    assert fit_encoding([codes], target="y").columns[0]["type"] == "category"


def test_a_declared_categorical_with_too_many_values_is_refused_with_its_count():
    frame = pd.DataFrame({"zip": np.arange(300) % 120, "y": 1})
    with pytest.raises(DataError) as excinfo:
        fit_encoding(chunks(frame, 100), target="y", categorical=["zip"], max_categories=50)
    one_line(excinfo, "data.categorical", "'zip'", "120 distinct values", "max_categories 50")


def test_a_date_column_that_does_not_parse_is_refused_with_a_sample():
    frame = pd.DataFrame({"day": ["2024-01-01", "2024-01-02", "2024-13-45", None], "y": 1})
    with pytest.raises(DataError) as excinfo:
        fit_encoding(chunks(frame, 2), target="y")
    one_line(excinfo, "'day'", "'2024-13-45'", "does not parse")
    encoding = fit_encoding([frame.head(2)], target="y")
    with pytest.raises(DataError) as excinfo:
        encoding.apply([{"day": "next tuesday"}])
    one_line(excinfo, "'day'", "'next tuesday'", "does not parse")


def test_an_all_missing_column_is_refused_naming_it(tmp_path):
    frame = pd.DataFrame({"empty": [None] * 5, "blank": [np.nan] * 5, "v": range(5), "y": 1})
    for column in ("empty", "blank"):
        with pytest.raises(DataError) as excinfo:
            fit_encoding(chunks(frame.drop(columns=({"empty", "blank"} - {column})), 2), target="y")
        one_line(excinfo, f"'{column}'", "all missing", "data.drop")
    path = tmp_path / "gaps.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as excinfo:  # a CSV column empty throughout arrives typed null
        fit_encoding(iter_source(str(path), 2), target="y", drop=["blank"])
    one_line(excinfo, "'empty'", "all missing")


def test_applying_refuses_a_missing_column_and_text_in_a_number_column(penguins):
    encoding = fit_encoding(chunks(penguins, 100), target="species")
    with pytest.raises(DataError) as excinfo:
        encoding.apply(penguins.drop(columns=["bill_depth_mm"]))
    one_line(excinfo, "'bill_depth_mm'", "missing")
    bad = penguins.astype({"flipper_length_mm": object})
    bad.loc[5, "flipper_length_mm"] = "long"
    with pytest.raises(DataError) as excinfo:
        encoding.apply(bad)
    one_line(excinfo, "'flipper_length_mm'", "'long'", "not a number")
    with pytest.raises(DataError) as excinfo:
        encoding.apply([{**penguins.iloc[0].to_dict(), "sex": "male", "year": "last year"}])
    one_line(excinfo, "'year'", "'last year'")
    assert encoding.apply([{**penguins.iloc[0].to_dict(), "year": "2008"}]).shape == (1, len(encoding.features))


def test_bad_roles_and_types_are_one_line():
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"], "y": 1})
    with pytest.raises(DataError) as excinfo:
        fit_encoding([frame], target="y", drop=["nope"])
    one_line(excinfo, "data.drop", "'nope'", "not a column")
    with pytest.raises(DataError) as excinfo:
        fit_encoding([frame], target="y", drop=["a"], categorical=["a"])
    one_line(excinfo, "'a'", "both")
    with pytest.raises(DataError) as excinfo:
        fit_encoding([pa.table({"l": pa.array([[1], [2]]), "y": [1, 2]})], target="y")
    one_line(excinfo, "'l'", "cannot be a feature", "data.drop")
    with pytest.raises(DataError) as excinfo:
        fit_encoding([frame, frame.assign(a=["p", "q"])], target="y")
    one_line(excinfo, "'a'", "changes type")
    with pytest.raises(DataError) as excinfo:
        EncodingFitter(target="y").finish()
    one_line(excinfo, "no training rows")
    with pytest.raises(DataError) as excinfo:
        Encoding.from_json({"format": "other"})
    one_line(excinfo, "format")


def test_blank_text_is_a_gap_in_categories_and_dates():
    frame = pd.DataFrame({"day": ["", "2024-01-01", " ", "2024-02-03"], "kind": ["a", "", "b", "a"], "y": 1})
    encoding = fit_encoding(chunks(frame, 1), target="y")
    assert [c["type"] for c in encoding.columns] == ["date", "category"]
    assert "day:missing" in encoding.features and "kind=<missing>" in encoding.features
    x = encoding.apply(frame)
    assert x[:, encoding.features.index("day:missing")].tolist() == [1, 0, 1, 0]


def test_words_for_a_gap_are_the_gaps_of_arrows_csv_reader():
    """Batch scoring reads CSV with Arrow; a server request or a pandas frame holding the same text
    (R's NA, numpy's nan, a database's NULL) gets the same numbers, and other text is still refused."""
    import pyarrow.csv as pa_csv

    assert set(GAP_WORDS) == set(pa_csv.ConvertOptions().null_values)
    frame = pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0], "flag": [True, False, None, True], "y": [0, 1, 0, 1]})
    encoding = fit_encoding([frame], target="y")
    words = pd.DataFrame({"x": ["1", " NA ", "nan", "1e400"], "flag": ["true", "N/A", "", "#N/A"]})
    gaps = pd.DataFrame({"x": [1.0, np.nan, np.nan, np.inf], "flag": [True, None, None, None]})
    assert np.array_equal(encoding.apply(words), encoding.apply(gaps))
    with pytest.raises(DataError, match=r"^column 'x': 'None' is not a number$"):
        encoding.apply(pd.DataFrame({"x": ["None"], "flag": [True]}))


def test_dates_beyond_pandas_nanoseconds_are_read_as_arrow_reads_them():
    """9999-12-31 ("no end date") and 1600-01-01 lie outside pandas' nanosecond years (1677 to 2262)."""
    frame = pd.DataFrame({"day": ["2024-03-01", "2020-07-04 10:30", "2019-12-31", None], "y": [0, 1, 0, 1]})
    encoding = fit_encoding([frame], target="y")
    far = ["9999-12-31", "1600-01-01 10:30", "2024-03-01T00:00:00"]
    as_text = encoding.apply(pd.DataFrame({"day": far}))
    as_dates = encoding.apply(pa.table({"day": pa.array(far).cast(pa.timestamp("s"))}))
    assert np.array_equal(as_text, as_dates)
    year = encoding.features.index("day:year")
    assert as_text[0, year] > as_text[2, year] > as_text[1, year]
    with pytest.raises(DataError, match=r"^column 'day': '9999-12-32' does not parse as a date$"):
        encoding.apply(pd.DataFrame({"day": ["9999-12-32"]}))


def _numbers_table(rows: int, seed: int, huge: int = 1000) -> pa.Table:
    """Numbers of every plain type, with NaN, infinities and null integers for gaps (and unsigned
    integers up to ``huge``: fitting refuses what float64 cannot hold, applying rounds it)."""
    rng = np.random.default_rng(seed)
    floats = rng.normal(size=rows) * 1e3
    floats[rng.random(rows) < 0.1] = np.nan
    floats[rng.random(rows) < 0.01] = np.inf
    columns = {
        "floats": floats,
        "float32": rng.normal(size=rows).astype(np.float32),
        "float16": rng.normal(size=rows).astype(np.float16),
        "ints": rng.integers(-(10**12), 10**12, rows),
        "uint64": rng.integers(0, huge, rows, dtype=np.uint64),
        "flags": rng.random(rows) < 0.3,
        "gappy_ints": pa.array(rng.integers(0, 100, rows), mask=rng.random(rows) < 0.2),
    }
    columns |= {f"wide{j}": rng.normal(size=rows) * j for j in range(12)}  # more columns than one tile
    return pa.table(columns)


@pytest.mark.parametrize("gaps_in_training", [True, False])
def test_all_number_tables_encode_as_the_general_path_does_to_the_bit(gaps_in_training, monkeypatch):
    """All-number encodings skip pandas for Arrow tables and numeric DataFrames: same float32 bits as
    the column-by-column path, with gaps, flags, every numeric type and more rows than one pass takes."""
    import workbench.ml.encoding as encoding_module

    train = _numbers_table(500, seed=0)
    if not gaps_in_training:
        train = train.drop_columns(["floats", "gappy_ints"])
    encoding = fit_encoding([train])
    assert any(spec["missing"] for spec in encoding.columns) == gaps_in_training
    scored = _numbers_table(9000, seed=1, huge=2**63).select(list(reversed(train.column_names)))
    forms = {
        "table": scored,
        "chunks": pa.concat_tables([scored.slice(0, 1000), scored.slice(1000)]),
        "batch": scored.combine_chunks().to_batches()[0],
        "frame": scored.to_pandas(),
        "few rows": scored.slice(0, 3),
        "no rows": scored.slice(0, 0),
    }
    fast = {name: encoding.apply(data) for name, data in forms.items()}
    monkeypatch.setattr(encoding_module, "_plain_columns", lambda data, names: None)
    for name, data in forms.items():
        general = encoding.apply(data)
        assert fast[name].dtype == general.dtype == np.float32 and fast[name].flags.c_contiguous, name
        assert np.array_equal(fast[name].view(np.uint32), general.view(np.uint32)), name


def test_numbers_the_general_path_must_convert_still_take_it():
    """Text in a number column, booleans with gaps, Arrow dictionaries: converted (or refused) as ever."""
    encoding = fit_encoding([pa.table({"x": [1.0, 2.0, 4.0], "b": [True, False, True]})])
    x = encoding.apply(pa.table({"x": ["3.5", None], "b": pa.array([None, True], pa.bool_())}))
    assert x.tolist() == encoding.apply([{"x": 3.5, "b": None}, {"x": None, "b": True}]).tolist()
    dictionary = pa.table({"x": pa.array([1.0, 2.0]).dictionary_encode(), "b": [True, True]})
    assert encoding.apply(dictionary).tolist() == encoding.apply({"x": [1.0, 2.0], "b": [True, True]}).tolist()
    with pytest.raises(DataError) as excinfo:
        encoding.apply(pa.table({"x": ["many"], "b": [True]}))
    one_line(excinfo, "'x'", "'many'", "not a number")
