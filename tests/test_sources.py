"""SQL sources (SQLite and a real PostgreSQL) and the streamed, two-pass prepare step."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine
from support.cli import workbench

from workbench.config.parameters import load
from workbench.config.schema import DataParams
from workbench.errors import DataError, ParameterError
from workbench.ml.dataset import load_split
from workbench.ml.splits import stratified_split
from workbench.stages.prepare_data import prepare_data
from workbench.storage.sources import count_rows, iter_source, read_source

QUERY = "SELECT * FROM digits WHERE label < 5"


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return read_source("bundled:digits")


@pytest.fixture
def sqlite_url(tmp_path, digits) -> str:
    url = f"sqlite:///{tmp_path}/warehouse.db"
    digits.to_sql("digits", create_engine(url), index=False)
    return url


def test_streamed_prepare_makes_the_in_memory_split(stage_ctx_factory, digits):
    """Chunks of 100 rows give the very rows, and the normalisation, of a whole-table split."""
    ctx = stage_ctx_factory("prepare", run_id="streamed")
    prepare_data(ctx, DataParams(val_fraction=0.2, test_fraction=0.1), seed=3, chunk_rows=100, progress=False)
    expected = stratified_split(digits.label.to_numpy(), 0.2, 0.1, 3)
    for name, rows in expected.items():
        pd.testing.assert_frame_equal(
            ctx.load_frame(f"{name}.parquet", "prepare"), digits.iloc[rows].reset_index(drop=True)
        )
    columns = ctx.load_json("encoding.json", "prepare")["columns"]
    train = digits.iloc[expected["train"]].drop(columns="label").to_numpy(dtype=float)
    assert np.allclose([c["mean"] for c in columns], train.mean(axis=0), atol=1e-12)
    std = train.std(axis=0)
    assert np.allclose([c["scale"] for c in columns], np.where(std > 0, std, 1.0), atol=1e-12)


def test_string_labels_and_parquet_row_groups(stage_ctx_factory, digits, tmp_path):
    named = digits.assign(label=digits.label.map(lambda d: f"digit-{d}"))
    pq.write_table(pa.Table.from_pandas(named), tmp_path / "named.parquet", row_group_size=200)
    assert count_rows(str(tmp_path / "named.parquet")) == 1797
    ctx = stage_ctx_factory("prepare", run_id="named")
    prepared = prepare_data(ctx, DataParams(source=str(tmp_path / "named.parquet")), seed=0, progress=False)
    assert prepared.counts.rows.tolist() == [1259, 269, 269, 1797]
    assert ctx.load_json("schema.json", "prepare")["classes"][0] == "digit-0"
    assert load_split(ctx, "val").y.max() == 9


def test_sql_table_and_query(stage_ctx_factory, sqlite_url, digits):
    table = {"url": sqlite_url, "table": "digits"}
    pd.testing.assert_frame_equal(read_source(table), digits)
    chunks = list(iter_source({"url": sqlite_url, "query": QUERY}, 250))
    assert [c.num_rows for c in chunks] == [250, 250, 250, 151]
    ctx = stage_ctx_factory("prepare", run_id="sql")
    prepared = prepare_data(ctx, DataParams(source={"url": sqlite_url, "query": QUERY}), seed=0, progress=False)
    assert prepared.counts.rows.iloc[-1] == int((digits.label < 5).sum())
    assert ctx.load_json("schema.json", "prepare")["source"].endswith(f"query {QUERY!r}")


def test_sql_errors_are_one_line(sqlite_url, tmp_path):
    cases = [
        (
            {"url": sqlite_url, "query": "SELECT * FROM nowhere"},
            r"data.source: .* failed \(no such table: nowhere\); check the data.source query",
        ),
        ({"url": sqlite_url, "table": "nowhere"}, r"no such table: nowhere\); check data.source.table"),
        ({"url": sqlite_url, "query": "SELECT * FROM digits WHERE 0"}, r"returned no rows"),
        ({"url": "nosuchdb://x/y", "table": "t"}, r"url 'nosuchdb://x/y' is not a usable SQLAlchemy URL"),
        ({"url": sqlite_url, "query": "x", "table": "t"}, r"exactly the keys url and query, or url and table"),
        ({"url": "postgresql://u:secret@h/db", "table": "t"}, r"must not hold a password"),
    ]
    for source, message in cases:
        with pytest.raises(DataError, match=message) as caught:
            read_source(source)
        assert "\n" not in str(caught.value) and "secret" not in str(caught.value)
    with pytest.raises(DataError, match=r"^data.source: the query must be one read-only SELECT .*not DELETE"):
        read_source({"url": sqlite_url, "query": "DELETE FROM digits"})
    assert len(read_source({"url": sqlite_url, "table": "digits"})) == 1797  # refused before it ran: nothing lost


# what a user (or someone writing their parameters) might send in a source's query; none may write
DESTRUCTIVE = [
    ("DROP TABLE keep", r"not DROP"),
    ("DELETE FROM keep", r"not DELETE"),
    ("UPDATE keep SET a = 0", r"not UPDATE"),
    ("SELECT 1; DROP TABLE keep", r"holds 2 statements"),
    ("select a from keep;\n-- the rest\n drop table keep;", r"holds 2 statements"),
    ("SELECT * INTO copied FROM keep", r"holds INTO"),
    ("WITH gone AS (DELETE FROM keep RETURNING *) SELECT * FROM gone", r"holds DELETE"),
]


def _keep(url: str) -> None:
    engine = create_engine(url)
    pd.DataFrame({"a": [1, 2, 3]}).to_sql("keep", engine, index=False)
    engine.dispose()


def _kept(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        return sorted(pd.read_sql("SELECT a FROM keep", engine).a)
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def test_a_source_query_never_writes(kind, tmp_path, request):
    """Only one SELECT (or WITH ... SELECT) reaches the database, named before anything runs; the
    table survives every attempt, through data.source and score.source alike."""
    url = f"sqlite:///{tmp_path}/src.db" if kind == "sqlite" else request.getfixturevalue("postgres")()
    _keep(url)
    for key in ("data.source", "score.source"):
        for query, problem in DESTRUCTIVE:
            with pytest.raises(DataError, match=rf"^{key}: the query .*{problem}") as caught:
                read_source({"url": url, "query": query}, key)
            assert "\n" not in str(caught.value)
            with pytest.raises(ParameterError, match=rf"^{key} in --set {key}=.*: the query .*{problem}"):
                load(sets=[f"{key}={{url: '{url}', query: {json.dumps(query)}}}"])
    assert _kept(url) == [1, 2, 3]
    pivot = "WITH t AS (SELECT a, 'drop; delete' AS note FROM keep) SELECT a, note AS \"update\" FROM t -- ;"
    assert read_source({"url": url, "query": pivot}).a.tolist() == [1, 2, 3]  # words in quotes are no SQL


def test_a_sqlite_source_opens_read_only(tmp_path):
    """Even a statement that slipped past the check cannot write: the file is opened with mode=ro,
    and a file that does not exist is named instead of created empty."""
    from sqlalchemy.exc import OperationalError

    from workbench.storage.sources import _read_only_engine

    url = f"sqlite:///{tmp_path}/src.db"
    _keep(url)
    engine = _read_only_engine(url, "data.source")
    with engine.connect() as conn, pytest.raises(OperationalError, match="readonly database"):
        conn.exec_driver_sql("DROP TABLE keep")
    engine.dispose()
    assert _kept(url) == [1, 2, 3]
    missing = tmp_path / "nowhere.db"
    with pytest.raises(DataError, match=rf"^data.source url .*: no SQLite database at {missing}; check the path$"):
        read_source({"url": f"sqlite:///{missing}", "table": "keep"})
    assert not missing.exists()


def test_a_postgres_source_reads_in_a_read_only_transaction(postgres):
    """A query that passes the check yet writes (nextval moves a sequence) is stopped by the server."""
    url = postgres()
    _keep(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE ticket")
    with pytest.raises(DataError, match=r"cannot execute nextval\(\) in a read-only transaction"):
        read_source({"url": url, "query": "SELECT nextval('ticket') AS n, a FROM keep"})
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT last_value, is_called FROM ticket").one() == (1, False)
    engine.dispose()
    assert read_source({"url": url, "query": "SELECT a FROM keep ORDER BY a"}).a.tolist() == [1, 2, 3]


def test_postgres_source_streams_through_a_server_side_cursor(stage_ctx_factory, postgres, digits):
    url = postgres()
    engine = create_engine(url)
    digits.assign(weight=1.5).to_sql("digits", engine, index=False)
    query = "SELECT label, SUM(p20)::numeric AS p20_sum, COUNT(*) AS n FROM digits GROUP BY label ORDER BY label"
    summary = read_source({"url": url, "query": query})
    assert summary.n.sum() == 1797 and summary.p20_sum.dtype == float  # NUMERIC arrives as float
    ctx = stage_ctx_factory("prepare", run_id="pg-source")
    prepared = prepare_data(
        ctx, DataParams(source={"url": url, "table": "public.digits"}), seed=0, chunk_rows=300, progress=False
    )
    assert prepared.counts.rows.tolist() == [1259, 269, 269, 1797]
    with engine.connect() as conn:  # the cursor was a named (server-side) one, closed when done
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_cursors").scalar() == 0
    with pytest.raises(DataError, match=r'relation "nowhere" does not exist'):
        read_source({"url": url, "query": "SELECT * FROM nowhere"})
    dead = url.rsplit(":", 1)[0] + ":1/nothing"
    with pytest.raises(DataError, match=r"cannot connect to postgresql\+psycopg://.*check host, port"):
        read_source({"url": dead, "table": "digits"})


def test_sql_source_as_a_parameter(tmp_path, sqlite_url):
    layer = tmp_path / "sql.yaml"
    layer.write_text(f"data:\n  source:\n    url: {sqlite_url}\n    query: {QUERY}\n")
    assert load([layer])["data.source"] == {"url": sqlite_url, "query": QUERY}
    given = load(sets=[f"data.source={{url: '{sqlite_url}', table: digits}}"])
    assert given["data.source"] == {"url": sqlite_url, "table": "digits"}
    assert load(sets=["data.source=some/file.csv"])["data.source"] == "some/file.csv"


@pytest.mark.e2e
def test_a_run_from_sql_and_its_failures(place, sqlite_url):
    source = f"data.source={{url: '{sqlite_url}', query: '{QUERY}'}}"
    result = workbench("run", "--steps", "prepare", *place.sets(source))
    assert result.code == 0, result.stderr
    run_id = result.stdout.split()[1]
    schema = json.loads((place.store / "runs" / run_id / "prepare" / "schema.json").read_text())
    assert schema["classes"] == [0, 1, 2, 3, 4]

    bad = workbench("run", "--steps", "prepare", *place.sets(source.replace("label < 5", "labl < 5")))
    assert bad.code == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == [bad.stderr.strip().splitlines()[-1]]
    assert "step prepare failed: DataError" in errors[0] and "no such column: labl" in errors[0]
    assert errors[0].endswith("check the data.source query")
    missing = workbench("run", "--steps", "prepare", *place.sets(source, "data.target=digit"))
    assert (
        missing.code == 1
        and "data.source sqlite:///" in missing.stderr
        and "data.target 'digit' is not a column (columns: p0" in missing.stderr
    )
    assert (place.store / "runs" / run_id / "prepare" / "train.parquet").is_file()  # the earlier run is intact


@pytest.mark.parametrize(("name", "sep"), [("tabs.csv", "\t"), ("pipe.csv", "|"), ("semi.csv.gz", ";")])
def test_csv_delimiter_is_read_off_the_header(tmp_path, digits, name, sep):
    """Tab, pipe and semicolon files (also gzipped) stream as the same table as the comma file."""
    digits.head(300).to_csv(tmp_path / "comma.csv", index=False)
    digits.head(300).to_csv(tmp_path / name, sep=sep, index=False)
    expected = pa.concat_tables(iter_source(str(tmp_path / "comma.csv"), 128))
    chunks = list(iter_source(str(tmp_path / name), 128))
    assert [c.num_rows for c in chunks] == [128, 128, 44]
    assert pa.concat_tables(chunks).equals(expected)


def test_corrupt_and_ambiguous_sources_name_the_file(tmp_path, digits, sqlite_url):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(DataError, match=rf"data.source {broken}: cannot be read as Parquet \(.*\); is the file"):
        count_rows(str(broken))  # the first thing prepare asks of a Parquet file
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.table([pa.array([1, 2]), pa.array([3, 4]), pa.array([0, 1])], names=["x", "x", "label"]), twice)
    with pytest.raises(DataError, match=r"twice.parquet: duplicate column names \['x'\]; rename them"):
        list(iter_source(str(twice), 10))
    query = {"url": sqlite_url, "query": "SELECT p1, p2 AS p1, label FROM digits"}
    with pytest.raises(DataError, match=r"returns duplicate column names \['p1'\]; give each column its own name"):
        read_source(query)
