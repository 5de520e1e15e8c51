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
