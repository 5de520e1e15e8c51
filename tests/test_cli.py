from __future__ import annotations

from conftest import workbench

from workbench.cli import build_parser, main
from workbench.params import SCHEMA


def test_help_lists_every_parameter_key(capsys):
    text = build_parser().format_help()
    assert all(p.key in text for p in SCHEMA)
    assert "runs" in text and "report" in text


def test_runs_on_an_empty_db(place, capsys):
    assert main(["runs", *place.sets()]) == 0
    assert "no runs yet" in capsys.readouterr().out


def test_set_without_equals_is_one_line(place):
    result = workbench("run", "--set", "train.epochs", *place.sets())
    assert result.code == 2 and result.stderr.startswith("error: --set 'train.epochs': expected KEY=VALUE")


def test_outside_a_project_says_where_to_run(tmp_path):
    result = workbench("run", "--set", f"store={tmp_path}/s", "--set", f"db=sqlite:///{tmp_path}/t.db", cwd=tmp_path)
    assert (
        result.code == 1
        and "no step notebooks in" in result.stderr
        and "run workbench from the project folder" in result.stderr
    )


def test_db_upgrade_is_the_one_explicit_step(tmp_path):
    from sqlalchemy import create_engine

    from workbench.tracking import metadata

    url = f"sqlite:///{tmp_path}/old.db"
    metadata.create_all(create_engine(url))  # tables without a schema version
    refused = workbench("runs", "--set", f"db={url}")
    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert (
        "is at schema unversioned, this workbench needs 0001; back it up, then run `workbench db upgrade`"
        in refused.stderr
    )
    for _ in range(2):
        upgraded = workbench("db", "upgrade", "--set", f"db={url}")
        assert upgraded.code == 0 and upgraded.stdout.strip().endswith("at schema 0001")
    assert workbench("runs", "--set", f"db={url}").code == 0


def test_unreachable_db_is_one_line(tmp_path):
    result = workbench("runs", "--set", "db=postgresql+psycopg://alice@127.0.0.1:1/x?connect_timeout=2")
    assert result.code == 1 and result.stderr.count("\n") == 1 and "is unreachable" in result.stderr


def test_passwords_stay_out_of_parameters():
    result = workbench("runs", "--set", "db=postgresql+psycopg://alice:s3cret@127.0.0.1/x")
    assert result.code == 2 and "must not hold a password" in result.stderr and "PGPASSWORD" in result.stderr
    assert "s3cret" not in result.stderr
