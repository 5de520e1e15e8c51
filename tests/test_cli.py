from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import ROOT, workbench

from workbench.cli import build_parser, main
from workbench.config.parameters import SCHEMA
from workbench.tracking.tracker import Tracker


def _help(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_shows_the_command_s_own_keys_wrapped_and_points_to_every_key():
    top = _help("--help")
    assert "runs" in top and "report" in top and "params" in top
    serve = _help("serve", "--help")
    keys = re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)?)  ", serve, re.MULTILINE)
    assert keys[0] == "serve.model" and {"store", "db"} <= set(keys) and "train.lr" not in serve
    assert "/ping" in serve and "/invocations" in serve and "/v2/models/NAME/infer" in serve
    run = _help("run", "--help")
    assert "train.*" in run and "train.lr" not in run and "--help-all" in run
    for text in (top, serve, run):
        assert max(len(line) for line in text.splitlines()) <= 80, text
    for every in (_help("serve", "--help-all"), _help("params")):
        assert all(p.key in every for p in SCHEMA)
        assert max(len(line) for line in every.splitlines()) <= 80
    assert [line.split()[0] for line in _help("params", "score").splitlines() if line.startswith("  score.")] == [
        p.key for p in SCHEMA if p.section == "score"
    ]


def test_runs_on_an_empty_db_and_on_a_missing_one(place, capsys):
    path = Path(place.db.removeprefix("sqlite:///"))
    assert main(["runs", *place.sets()]) == 1  # a mistyped db path is named, not created empty
    assert capsys.readouterr().err.strip() == (
        f"error: db {place.db!r}: no tracking database at {path}; check the db parameter (`workbench run` creates it)"
    )
    assert not path.exists()
    Tracker(place.db)
    assert main(["runs", *place.sets()]) == 0
    assert "no runs yet" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:  # argparse's own exit
        main(["runs", "--limit", "0", *place.sets()])
    assert caught.value.code == 2
    assert "argument --limit: must be 1 or more, got 0" in capsys.readouterr().err


def test_an_empty_step_list_is_refused(place, capsys):
    assert main(["run", "--steps", "", *place.sets()]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --steps '': names no step; steps are prepare, train, export, validate, score"
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--traceback"], None), ([], {"WORKBENCH_DEBUG": "1"})],
    ids=["--traceback", "WORKBENCH_DEBUG=1"],
)
def test_debugging_prints_the_cause_chain_and_then_the_one_line(place, tmp_path, args, env):
    missing = tmp_path / "nowhere.yaml"
    result = workbench(*args, "runs", "-p", str(missing), *place.sets(), env=env)
    line = f"error: parameter file {missing} not found; check the -p path"
    assert result.code == 2 and result.stderr.strip().splitlines()[-1] == line
    assert "FileNotFoundError: [Errno 2]" in result.stderr
    assert "The above exception was the direct cause of the following exception" in result.stderr
    assert "ParameterError: parameter file" in result.stderr


def test_without_debugging_an_error_is_exactly_one_line(place, tmp_path):
    missing = tmp_path / "nowhere.yaml"
    result = workbench("runs", "-p", str(missing), *place.sets(), env={"WORKBENCH_DEBUG": "0"})
    assert result.code == 2 and result.stderr == f"error: parameter file {missing} not found; check the -p path\n"


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
    from alembic import command
    from sqlalchemy import create_engine

    from workbench.tracking.tracker import _alembic_config, schema_head

    url = f"sqlite:///{tmp_path}/old.db"
    with create_engine(url).begin() as conn:  # the first release's tables, made before migrations existed
        command.upgrade(_alembic_config(conn), "0001")
        conn.exec_driver_sql("DROP TABLE alembic_version")
    refused = workbench("runs", "--set", f"db={url}")
    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert (
        f"is at schema unversioned, this workbench needs {schema_head()}; back it up, then run `workbench db upgrade`"
        in refused.stderr
    )
    for _ in range(2):
        upgraded = workbench("db", "upgrade", "--set", f"db={url}")
        assert upgraded.code == 0 and upgraded.stdout.strip().endswith(f"at schema {schema_head()}")
    assert workbench("runs", "--set", f"db={url}").code == 0


def test_unreachable_db_is_one_line(tmp_path):
    result = workbench("runs", "--set", "db=postgresql+psycopg://alice@127.0.0.1:1/x?connect_timeout=2")
    assert result.code == 1 and result.stderr.count("\n") == 1 and "is unreachable" in result.stderr


def test_passwords_stay_out_of_parameters():
    result = workbench("runs", "--set", "db=postgresql+psycopg://alice:s3cret@127.0.0.1/x")
    assert result.code == 2 and "must not hold a password" in result.stderr and "PGPASSWORD" in result.stderr
    assert "s3cret" not in result.stderr


def test_a_step_without_its_inputs_is_refused_before_a_run_exists(place):
    result = workbench("run", "--steps", "train", *place.sets())
    assert result.code == 2 and result.stderr == (
        "error: --steps train: train needs prepare's outputs of the same run; add prepare "
        "(e.g. --steps prepare,train), or score an earlier run's model with --steps score\n"
    )
    assert not place.store.exists() and not Path(place.db.removeprefix("sqlite:///")).exists()
    validate = workbench("run", "--steps", "export,validate", *place.sets())
    assert validate.code == 2 and "export needs train's outputs" in validate.stderr


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lr=.inf", "error: train.lr in --set train.lr=.inf: must be a finite number, got inf\n"),
        ("seed=-1", "error: seed in --set seed=-1: must be between 0 and 4294967295 (2**32-1), got -1\n"),
    ],
)
def test_bad_numbers_are_refused_up_front(place, item, message):
    result = workbench("run", *place.sets(item))
    assert result.code == 2 and result.stderr == message and not place.store.exists()


def test_exponent_numbers_reach_the_run_parameters(place):
    from workbench.cli import _parameters

    args = build_parser().parse_args(["run", *place.sets("train.lr=1e-3", "train.epochs=1e2")])
    assert _parameters(args)["train.lr"] == 1e-3 and _parameters(args)["train.epochs"] == 100


@pytest.mark.parametrize("kind", ["folder", "png", "gzip"])
def test_a_parameter_file_that_is_not_yaml_text_is_one_line(place, tmp_path, kind):
    path = tmp_path / {"folder": "params", "png": "plot.png", "gzip": "p.yaml.gz"}[kind]
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0" if kind == "png" else gzip.compress(b"seed: 1\n"))
    result = workbench("runs", "-p", str(path), *place.sets())
    assert result.code == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: parameter file {path} is ") and "give -p a YAML" in result.stderr


@pytest.mark.parametrize("args", [["runs"], ["runs", "--json"]])
def test_a_reader_that_goes_away_early_is_no_traceback(place, args):
    """`workbench runs | head -1`: the pipe closes before everything is written."""
    Tracker(place.db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", *args, *place.sets()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the only reader: every write from now on is EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--name", ""], "error: --name '': a run's name cannot be empty; e.g. --name lr-sweep"),
        (["--name", "  "], "error: --name '  ': a run's name cannot be empty; e.g. --name lr-sweep"),
        (["--name", "a\nb"], "error: --name 'a\\nb': a name is one line of printable text"),
        (["--tag", "novalue"], "error: --tag 'novalue': expected KEY=VALUE, e.g. --tag team=vision"),
        (["--tag", "=x"], "error: --tag '=x': expected KEY=VALUE, e.g. --tag team=vision"),
        (["--tag", "a=1", "--tag", "a=2"], "error: --tag 'a=2': tag a is given twice ('1' and '2'); keep one"),
        (
            ["--resume", "x", "--name", "y"],
            "error: --name and --tag label a new run; drop them with --resume (`workbench runs tag` labels a run)",
        ),
    ],
)
def test_run_names_and_tags_are_checked_before_any_run(place, capsys, args, line):
    assert main(["run", *args, *place.sets()]) == 2
    assert capsys.readouterr().err.strip() == line
    assert not Path(place.db.removeprefix("sqlite:///")).exists()  # no run, not even a database
