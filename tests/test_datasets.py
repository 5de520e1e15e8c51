"""Partitioned Parquet datasets as sources (workbench/storage/datasets.py): a hive folder on the local
store, an S3 prefix and a glob on a real S3 endpoint (moto's server), schemas unified or refused by
file, fingerprints by file, and `workbench run` preparing from a dataset and scoring one."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import pickle
import re
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.cli import Place, run_id_of, workbench
from support.locals3 import S3Server, moto_endpoint, s3_environment

from workbench.errors import DataError
from workbench.run.reuse import describe_changes
from workbench.storage import scratch
from workbench.storage.datasets import Fragment, FragmentReader, is_dataset, open_dataset
from workbench.storage.fingerprints import fingerprint
from workbench.storage.sources import count_rows, is_parquet, iter_source, read_source

DAYS = ("2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04")


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return read_source("bundled:digits")


def parts_of(digits: pd.DataFrame) -> dict[str, pa.Table]:
    """The digits table cut into four days' files (relative path -> table), several row groups each."""
    cuts = np.array_split(np.arange(len(digits)), len(DAYS))
    return {
        f"date={day}/part-0000.parquet": pa.Table.from_pandas(digits.iloc[rows], preserve_index=False)
        for day, rows in zip(DAYS, cuts, strict=True)
    }


def write_parts(folder: Path, parts: dict[str, pa.Table]) -> None:
    for name, table in parts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name, row_group_size=150)


def expected(digits: pd.DataFrame, days: tuple[str, ...] = DAYS) -> pd.DataFrame:
    cuts = np.array_split(np.arange(len(digits)), len(DAYS))
    frames = [digits.iloc[rows].assign(date=day) for day, rows in zip(DAYS, cuts, strict=True) if day in days]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def lake(tmp_path: Path, digits: pd.DataFrame) -> Path:
    """Hive folders as Spark leaves them: the data files, a _SUCCESS marker and hidden checksum files."""
    folder = tmp_path / "sales"
    write_parts(folder, parts_of(digits))
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "date=2026-12-01" / ".part-0000.parquet.crc").write_bytes(b"crc")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.relative_to(folder).as_posix(): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in folder.rglob("*")
        if p.is_file()
    }


# ---- a local folder ---------------------------------------------------------------------------------


def test_a_hive_folder_reads_as_one_table_with_its_partition_column(lake, digits):
    before = snapshot(lake)
    for source in (str(lake), f"{lake}/", f"{lake}/date=*/*.parquet", f"{lake}/**/part-*.parquet"):
        assert is_dataset(source) and is_parquet(source)
        assert count_rows(source) == 1797
        pd.testing.assert_frame_equal(read_source(source), expected(digits))
    chunks = list(iter_source(str(lake), 500))
    assert [c.num_rows for c in chunks] == [500, 500, 500, 297]
    assert pa.concat_tables(chunks).to_pandas().equals(expected(digits))
    some = read_source(f"{lake}/date=2026-12-0[13]/*.parquet")
    pd.testing.assert_frame_equal(some, expected(digits, (DAYS[0], DAYS[2])))
    assert snapshot(lake) == before  # a source is only read: nothing written, nothing touched


def test_fragments_in_path_order_are_the_table_iter_source_gives(lake, digits):
    dataset = open_dataset(str(lake))
    assert [f.uri for f in dataset.fragments] == [f"{lake}/date={day}/part-0000.parquet" for day in DAYS]
    assert [f.index for f in dataset.fragments] == [0, 1, 2, 3]
    assert [f.offset for f in dataset.fragments] == [0, 450, 899, 1348]
    assert dataset.rows == sum(f.rows for f in dataset.fragments) == 1797
    assert dataset.schema.names == [*digits.columns, "date"]
    whole = pa.concat_tables(iter_source(str(lake), 256))
    # a worker process reads a fragment from the pickled reader and fragment alone
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pieces = list(pool.map(read_fragment, [dataset.reader] * 4, dataset.fragments))
    assert pa.concat_tables(pieces).equals(whole)
    for fragment, piece in zip(dataset.fragments, pieces, strict=True):
        assert whole.slice(fragment.offset, fragment.rows).equals(piece)
    assert len(pickle.dumps(dataset.reader)) < 20_000
    one = open_dataset(str(lake / "date=2026-12-02" / "part-0000.parquet"))  # a file: a dataset of one fragment
    assert [(f.rows, f.folder) for f in one.fragments] == [(449, "")] and "date" not in one.schema.names


def read_fragment(reader: FragmentReader, fragment: Fragment) -> pa.Table:
    return pa.Table.from_batches(list(reader.read(fragment, batch_size=100)), reader.schema)


def test_schemas_unify_across_files_or_are_refused_naming_the_file(tmp_path):
    folder = tmp_path / "events"
    write_parts(
        folder,
        {
            "year=2025/a.parquet": pa.table({"id": [1, 2], "amount": [10, 20]}),  # older: no 'channel', int amount
            "year=2026/b.parquet": pa.table({"id": [3], "amount": [2.5], "channel": ["web"]}),
        },
    )
    table = read_source(str(folder))
    assert table.dtypes.to_dict() == {
        "id": np.dtype("int64"),
        "amount": np.dtype("float64"),
        "channel": np.dtype("object"),
        "year": np.dtype("int64"),  # whole-number folder values are numbers
    }
    assert table.amount.tolist() == [10.0, 20.0, 2.5]
    assert table.channel.tolist()[:2] == [None, None] and table.year.tolist() == [2025, 2025, 2026]

    write_parts(folder, {"year=2027/c.parquet": pa.table({"id": [4], "amount": ["n/a"]})})
    with pytest.raises(DataError) as refused:
        read_source(str(folder))
    assert str(refused.value) == (
        f"data.source {folder}/year=2027/c.parquet: column 'amount' is string here but int64 in "
        f"{folder}/year=2025/a.parquet; write it with one type in every file"
    )
    with pytest.raises(DataError, match=r"^score.source .*/year=2027/c.parquet: column 'amount' is string"):
        count_rows(f"{folder}/", "score.source")


def test_empty_matches_missing_folders_and_other_files_are_one_line(lake, tmp_path):
    pattern = f"{lake}/date=2027-*/*.parquet"
    with pytest.raises(DataError) as empty:
        read_source(pattern)
    assert str(empty.value) == (
        f"data.source {pattern}: no file matches the pattern; check the path (a dataset is read from Parquet files)"
    )
    with pytest.raises(DataError, match=rf"^data.source {tmp_path}/nowhere/: no folder at {tmp_path}/nowhere; "):
        count_rows(f"{tmp_path}/nowhere/")
    (lake / "date=2026-12-02" / "notes.txt").write_text("who wrote this")
    (lake / "readme.md").write_text("#")
    with pytest.raises(DataError) as other:
        read_source(str(lake))
    assert str(other.value).startswith(f"data.source {lake}: not Parquet: date=2026-12-02/notes.txt, readme.md; ")
    assert "\n" not in str(other.value)
    assert read_source(f"{lake}/*/*.parquet").shape == (1797, 66)  # a glob reads what it matches
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=rf"^data.source {broken}/cut.parquet: cannot be read as Parquet \("):
        read_source(str(broken))


def test_a_dataset_fingerprint_changes_with_any_one_file_and_names_it(lake, digits, tmp_path):
    first = fingerprint(str(lake), "data.source")
    assert re.fullmatch(r"dataset [0-9a-f]{64} 4 files", first.value or "")
    assert sorted(first.files) == [f"date={day}/part-0000.parquet" for day in DAYS]
    assert fingerprint(f"{lake}/", "data.source").value == first.value

    changed_file = lake / "date=2026-12-03" / "part-0000.parquet"
    pq.write_table(pa.Table.from_pandas(digits.head(10), preserve_index=False), changed_file)
    second = fingerprint(str(lake), "data.source")
    assert second.value != first.value
    assert {k for k in first.files if first.files[k] != second.files[k]} == {"date=2026-12-03/part-0000.parquet"}

    write_parts(lake, {"date=2026-12-05/part-0000.parquet": pa.Table.from_pandas(digits.head(5), preserve_index=False)})
    third = fingerprint(str(lake), "data.source")
    assert third.value.endswith(" 5 files")

    def ingredients(found):
        return {"data:data.source": found.value} | {f"data file:{k}": v for k, v in found.files.items()}

    assert describe_changes(ingredients(first), ingredients(third)) == (
        "data.source changed (4 files -> 5 files); data files: date=2026-12-03/part-0000.parquet changed, "
        "date=2026-12-05/part-0000.parquet added"
    )
    missing = fingerprint(f"{tmp_path}/nothing/*.parquet", "data.source")
    assert missing.value is None and "no file matches the pattern" in missing.why


# ---- S3 (moto's server over HTTP) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto server of this module's own, whose request log shows each GET's status (206: a range)."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log, moto_endpoint(log) as endpoint:
        yield endpoint, log_path


@pytest.fixture
def s3_lake(logged_s3, digits, monkeypatch):
    """The digits as four days' objects under s3://BUCKET/sales/, with a _SUCCESS marker."""
    endpoint, log_path = logged_s3
    for name, value in s3_environment(endpoint).items():
        monkeypatch.setenv(name, value)
    server = S3Server(endpoint, s3_environment(endpoint))
    client = server.client()
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for name, table in parts_of(digits).items():
        body = io.BytesIO()
        pq.write_table(table, body, row_group_size=150)
        client.put_object(Bucket=bucket, Key=f"sales/{name}", Body=body.getvalue())
    client.put_object(Bucket=bucket, Key="sales/_SUCCESS", Body=b"")
    return client, bucket, log_path


@pytest.mark.services
def test_an_s3_prefix_and_a_glob_read_as_one_table(s3_lake, digits):
    client, bucket, _ = s3_lake
    prefix = f"s3://{bucket}/sales/"
    assert count_rows(prefix) == 1797
    pd.testing.assert_frame_equal(read_source(prefix), expected(digits))
    glob = f"s3://{bucket}/sales/date=2026-12-0[24]/*.parquet"
    pd.testing.assert_frame_equal(read_source(glob), expected(digits, (DAYS[1], DAYS[3])))
    assert [f.uri for f in open_dataset(glob).fragments] == [
        f"s3://{bucket}/sales/date={day}/part-0000.parquet" for day in (DAYS[1], DAYS[3])
    ]
    one = open_dataset(f"s3://{bucket}/sales/date=2026-12-01/part-0000.parquet")
    assert one.rows == 450 and pa.Table.from_batches(list(one.batches())).num_rows == 450
    with pytest.raises(DataError, match=rf"^data.source s3://{bucket}/sales/date=2030-\*/\*.parquet: no file matches"):
        read_source(f"s3://{bucket}/sales/date=2030-*/*.parquet")
    with pytest.raises(DataError, match=r"^data.source s3://no-such-lake: bucket 'no-such-lake' does not exist"):
        read_source("s3://no-such-lake/sales/")

    first = fingerprint(prefix, "data.source")
    etag = client.head_object(Bucket=bucket, Key="sales/date=2026-12-02/part-0000.parquet")["ETag"].strip('"')
    assert first.files["date=2026-12-02/part-0000.parquet"].startswith(f"etag {etag} ")
    body = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(digits.head(3), preserve_index=False), body)
    client.put_object(Bucket=bucket, Key="sales/date=2026-12-02/part-0000.parquet", Body=body.getvalue())
    second = fingerprint(prefix, "data.source")
    assert second.value != first.value
    assert [k for k in first.files if first.files[k] != second.files[k]] == ["date=2026-12-02/part-0000.parquet"]


@pytest.mark.services
def test_s3_objects_are_read_in_ranges_never_downloaded_whole(s3_lake, digits):
    _, bucket, log_path = s3_lake
    start = len(log_path.read_bytes())
    before = {p.name for p in scratch.root().rglob("*")}
    dataset = open_dataset(f"s3://{bucket}/sales/")
    table = pa.Table.from_batches(list(dataset.batches(200)), dataset.schema)
    assert table.num_rows == 1797 and table.column("p5").to_pylist() == digits.p5.tolist()
    gets = [
        line
        for line in log_path.read_bytes()[start:].decode(errors="replace").splitlines()
        if f"GET /{bucket}/sales/date=" in line
    ]
    assert len(gets) >= 4
    assert all(line.rstrip(" -").endswith(" 206") for line in gets), gets  # ranged reads only, no whole GET
    assert {p.name for p in scratch.root().rglob("*")} == before  # no local copy of any object


# ---- through the command line ---------------------------------------------------------------------


@pytest.mark.e2e
def test_prepare_from_a_dataset_folder_reruns_when_one_file_changes(lake, digits, tmp_path):
    place = Place(tmp_path / "store", f"sqlite:///{tmp_path}/tracking.db")
    source = f"data.source={lake}/"

    def prepare(*extra: str):
        return workbench("run", "--steps", "prepare", *place.sets(source, "data.drop=[date]", *extra))

    first = prepare()
    assert first.code == 0, first.stderr
    run_id = run_id_of(first.stdout)
    train = pq.read_table(place.store / "runs" / run_id / "prepare" / "train.parquet")
    val = pq.read_table(place.store / "runs" / run_id / "prepare" / "val.parquet")
    test = pq.read_table(place.store / "runs" / run_id / "prepare" / "test.parquet")
    assert train.num_rows + val.num_rows + test.num_rows == 1797
    assert "prepare reused from" in prepare().stderr

    pq.write_table(
        pa.Table.from_pandas(digits.tail(300), preserve_index=False), lake / "date=2026-12-02" / "part-0000.parquet"
    )
    again = prepare()
    assert again.code == 0, again.stderr
    assert (
        "prepare runs: data.source changed (4 files); data files: date=2026-12-02/part-0000.parquet changed"
        in again.stderr
    )

    pattern = f"{lake}/date=2031-*/*.parquet"
    empty = workbench("run", "--steps", "prepare", *place.sets(f"data.source={pattern}"))
    assert empty.code == 2 and empty.stdout == ""  # refused before a run starts
    assert empty.stderr.strip().splitlines()[-1] == (
        f"error: data.source {pattern}: no file matches the pattern; "
        "check the path (a dataset is read from Parquet files)"
    )


@pytest.mark.e2e
def test_batch_scoring_reads_a_dataset_as_it_reads_the_one_file(small_run, lake, digits, tmp_path):
    scores = {}
    for name, source in (("file", "bundled:digits"), ("dataset", f"{lake}/date=*/*.parquet")):
        result = workbench(
            "run",
            "--steps",
            "score",
            *small_run.place.sets(f"score.source={source}", f"score.model_run={small_run.run_id}"),
        )
        assert result.code == 0, result.stderr
        folder = small_run.place.store / "runs" / run_id_of(result.stdout) / "score"
        scores[name] = pq.read_table(folder / "predictions.parquet").to_pandas()
    assert len(scores["dataset"]) == 1797
    pd.testing.assert_frame_equal(scores["dataset"], scores["file"])
