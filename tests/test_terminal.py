"""Runs as text: the runs table, one run, runs side by side, and the commands that print them."""

from __future__ import annotations

import json

import pytest
from support.runs import stale_notebook_run

from workbench.cli import main
from workbench.storage.base import ArtifactInfo
from workbench.tracking.queries import RunQuery, compare_runs, find_runs
from workbench.tracking.terminal import comparison_text, run_text, runs_table, show
from workbench.tracking.tracker import Tracker


@pytest.fixture
def db(tmp_path) -> str:
    """Two runs that differ in train.lr: a named, tagged one with a better accuracy, and a bare one."""
    url = f"sqlite:///{tmp_path}/t.db"
    tracker = Tracker(url)
    for run_id, lr, accuracy, loss in (("slow", 0.001, 0.91, 0.30), ("fast", 0.05, 0.85, 0.45)):
        tracker.create_run(
            "/store",
            {"train.lr": lr, "train.epochs": 30, "seed": 0},
            {"train.lr": f"--set train.lr={lr}"},
            run_id=run_id,
            name="careful one" if run_id == "slow" else None,
            tags={"team": "vision"} if run_id == "slow" else None,
        )
        tracker.plan_steps(run_id, ["prepare", "train"])
        tracker.finish_step(run_id, "prepare", "finished", 2.0)
        tracker.finish_step(run_id, "train", "finished", 12.5)
        tracker.log_metrics(run_id, "train", {"val_accuracy": accuracy, "val_loss": loss, "parity_pass": 1.0})
        key = f"runs/{run_id}/train/model.pth"
        tracker.log_artifact(run_id, "train", ArtifactInfo(key, f"/store/{key}", "ab" * 32, 2048))
        tracker.finish_run(run_id, "finished")
    return url


def test_values_read_as_cells():
    assert [show(v) for v in (None, True, 0.001, 30.0, 1e-05, 0.123456, ["a", "b"], [], "x" * 50)] == [
        "-",
        "true",
        "0.001",
        "30",
        "1e-05",
        "0.1235",
        "a,b",
        "[]",
        "x" * 39 + "…",
    ]


def test_the_runs_table_shows_columns_names_and_tags(db):
    query = RunQuery(columns=("train.lr", "val_accuracy", "parity_pass"), sort="-val_accuracy", limit=1)
    text = runs_table(find_runs(Tracker(db), query), query)
    header, row, more = text.splitlines()
    assert header.split() == [
        "run",
        "status",
        "started",
        "seconds",
        "train.lr",
        "val_accuracy",
        "parity_pass",
        "name",
        "tags",
    ]
    assert row.split()[:2] == ["slow", "finished"] and row.split()[4:] == [
        "0.001",
        "0.91",
        "PASS",
        "careful",
        "one",
        "team=vision",
    ]
    assert more == "1 of 2 runs shown; --limit shows more, --where fewer"


def test_one_run_shows_changed_parameters_first_then_metrics_and_artifacts(db):
    text = run_text(Tracker(db).get_run("slow"))
    lines = text.splitlines()
    assert lines[1:3] == ["name   careful one", "tags   team=vision"]
    title = "parameters (* differs from the default; where each value came from)"
    parameters = lines[lines.index(title) + 1 :][:3]
    assert [line.split() for line in parameters] == [
        ["*", "train.lr", "0.001", "--set", "train.lr=0.001"],
        ["seed", "0"],
        ["train.epochs", "30"],
    ]
    assert ["val_accuracy", "0.91"] in [line.split() for line in lines]
    assert ["parity_pass", "PASS"] in [line.split() for line in lines]
    assert "artifacts (in /store/runs/slow/)" in lines
    assert ["train/model.pth", "2,048", "B", "abababababab"] in [line.split() for line in lines]


def test_results_of_a_stale_step_are_never_shown_as_current(db, capsys):
    """A parity verdict and numbers that a step recorded before its inputs changed read as stale, in
    the runs table, in `runs show` and in `runs --json`; a current one beside them reads as it is."""
    stale_notebook_run(Tracker(db), "again")
    query = RunQuery(columns=("val_accuracy", "parity_pass", "mxnet_accuracy"), limit=2)
    text = runs_table(find_runs(Tracker(db), query), query)
    header, row, current, note = text.splitlines()[:4]
    assert header.split()[4:7] == ["val_accuracy", "parity_pass", "mxnet_accuracy"]
    assert row.split()[:2] == ["again", "stale"] and row.split()[4:] == ["0.96", "stale", "0.91", "(stale)", "-"]
    assert current.split()[4:6] == ["0.85", "PASS"] and "PASS" not in row
    assert note.startswith("stale: recorded by a step whose inputs changed since it ran")

    lines = run_text(Tracker(db).get_run("again")).splitlines()
    assert "metrics (stale: recorded by a step that must run again)" in lines
    shown = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ")}
    assert shown["parity_pass"] == ["stale", "was", "PASS", "before;", "validate", "must", "run", "again"]
    assert shown["mxnet_accuracy"] == ["0.91", "(stale)", "validate", "must", "run", "again"]
    assert shown["val_accuracy"] == ["0.96"]

    assert main(["runs", "--set", f"db={db}", "--json", "--limit", "1"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["stale_metrics"] == ["mxnet_accuracy", "parity_pass", "test_accuracy"]


def test_runs_side_by_side_mark_the_best(db):
    text = comparison_text(compare_runs(Tracker(db), ["slow", "fast"]))
    lines = text.splitlines()
    assert lines[0].split() == ["slow", "fast"] and lines[1].split() == ["name", "careful", "one"]
    assert "parameters that differ (2 the same; --all shows them)" in lines
    assert next(line for line in lines if line.startswith("train.lr")).split() == ["train.lr", "0.001", "0.05"]
    assert next(line for line in lines if line.startswith("val_accuracy")).split() == ["val_accuracy", "0.91*", "0.85"]
    assert next(line for line in lines if line.startswith("val_loss")).split() == ["val_loss", "0.3*", "0.45"]
    assert next(line for line in lines if line.startswith("parity_pass")).split() == ["parity_pass", "PASS", "PASS"]
    assert text.index("val_accuracy") < text.index("val_loss") < text.index("parity_pass")  # scores first
    assert next(line for line in lines if line.startswith("train ")).split() == ["train", "12.5", "s", "12.5", "s"]


def test_compare_all_shows_every_parameter(db, capsys):
    assert main(["runs", "compare", "slow", "fast", "--set", f"db={db}"]) == 0
    assert "train.epochs" not in capsys.readouterr().out
    assert main(["runs", "compare", "slow", "fast", "--all", "--set", f"db={db}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "parameters" in lines and ["train.epochs", "30", "30"] in [line.split() for line in lines]


def test_runs_lists_filters_sorts_and_prints_json(db, capsys):
    assert main(["runs", "--set", f"db={db}", "--columns", "train.lr", "--sort", "-train.lr"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["fast", "slow"]
    assert main(["runs", "--set", f"db={db}", "--where", "train.lr<0.01", "--tag", "team=vision"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["slow"]
    assert main(["runs", "--set", f"db={db}", "--where", "val_accuracy>0.99"]) == 0
    assert capsys.readouterr().out.startswith("no runs match")
    assert main(["runs", "--set", f"db={db}", "--json", "--limit", "1"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["id"] == "fast" and run["parameters"]["train.lr"] == 0.05 and run["metrics"]["val_loss"] == 0.45


def test_tags_and_notes_are_set_and_shown(db, capsys):
    assert main(["runs", "tag", "fast", "team=speech", "try=2", "--set", f"db={db}"]) == 0
    assert capsys.readouterr().out.strip() == "run fast tagged team=speech try=2"
    assert main(["runs", "tag", "fast", "try=3", "--set", f"db={db}"]) == 0  # a tag takes its new value
    assert main(["runs", "note", "fast", "lr too high: loss jumps after epoch 2", "--set", f"db={db}"]) == 0
    run = Tracker(db).get_run("fast")
    assert run["tags"] == {"team": "speech", "try": "3"} and run["note"] == "lr too high: loss jumps after epoch 2"
    capsys.readouterr()
    assert main(["runs", "show", "fast", "--set", f"db={db}"]) == 0
    assert "note   lr too high: loss jumps after epoch 2" in capsys.readouterr().out
    assert main(["runs", "--tag", "team=speech", "--set", f"db={db}"]) == 0
    assert "team=speech try=3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["runs", "tag", "nope", "a=b"], 1, "error: no run 'nope' in db"),
        (["runs", "note", "nope", "x"], 1, "error: no run 'nope' in db"),
        (["runs", "compare", "slow", "nope"], 1, "error: no run 'nope' in db"),
        (["runs", "compare", "slow"], 2, "error: compare needs two runs or more, got 1"),
        (["runs", "tag", "slow", "novalue"], 2, "error: --tag 'novalue': expected KEY=VALUE, e.g. --tag team=vision"),
        (["runs", "--tag", "team"], 2, "error: --tag 'team': expected KEY=VALUE"),
        (["runs", "--where", "train.lr~1"], 2, "error: condition 'train.lr~1': expected KEY OP VALUE"),
        (["runs", "--columns", "train.lrr"], 2, "error: --columns train.lrr: no run records 'train.lrr'"),
        (["runs", "--sort", "-val_acc"], 2, "error: --sort -val_acc: no run records 'val_acc'"),
        (["runs", "--where", "val_acc>0.5"], 2, "error: --where val_acc>0.5: no run records 'val_acc'"),
    ],
)
def test_bad_input_is_one_line(db, capsys, args, code, line):
    assert main([*args, "--set", f"db={db}"]) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1
