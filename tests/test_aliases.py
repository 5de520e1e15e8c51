"""Aliases (workbench/tracking/aliases.py) and the promotion gate (workbench/run/gate.py), on real runs:
`workbench models ...`, `runs show @champion`, `score.model_run=@champion`.

Three runs share one store and database: two that passed parity (different learning rates, so
their models differ) and one whose parity failed (zero tolerances), which no alias may name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import FEW, Place, workbench

from workbench.errors import ParameterError, TrackingError
from workbench.run.gate import GateClosed, promote, score_on
from workbench.tracking.aliases import current, history, models, remove_alias, resolve, set_alias
from workbench.tracking.tracker import Tracker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Place, str, str, str]:
    tmp = tmp_path_factory.mktemp("aliases")
    place = Place(tmp / "store", f"sqlite:///{tmp}/tracking.db")
    made = []
    for extra in (["train.lr=0.002"], ["train.lr=0.0005"], ["validate.atol=0", "validate.rtol=0"]):
        result = workbench("run", "--no-reuse", *place.sets(*FEW, *extra))
        made.append(result)
    assert made[0].code == 0 and made[1].code == 0, made[0].stderr + made[1].stderr
    assert made[2].code != 0 and "parity" in made[2].stderr.lower(), made[2].stderr
    ids = [result.stdout.split()[1] if result.code == 0 else _failed_id(result.stderr) for result in made]
    return place, ids[0], ids[1], ids[2]


def _failed_id(stderr: str) -> str:
    return next(line.split()[1].rstrip(":") for line in stderr.splitlines() if line.startswith("run "))


def test_an_alias_names_only_a_model_that_exported_and_passed(runs, tmp_path):
    place, good, _other, failed = runs
    tracker = Tracker(place.db)
    with pytest.raises(TrackingError, match=rf"^alias @champion not moved: run {failed}: it failed validation"):
        set_alias(tracker, "champion", failed)
    with pytest.raises(TrackingError, match=r"there is no run 'nope'"):
        set_alias(tracker, "champion", "nope")
    with pytest.raises(ParameterError, match=r"an alias is a letter then"):
        set_alias(tracker, "9lives", good)
    assert "champion" not in current(tracker)


def test_set_resolve_remove_and_history_through_the_cli(runs):
    place, good, other, _failed = runs
    moved = workbench("models", "alias", "set", "staging", good, "--reason", "first cut", *place.sets())
    assert moved.code == 0 and moved.stdout.strip() == f"@staging -> {good}", moved.stderr
    again = workbench("models", "alias", "set", "staging", other, *place.sets())
    assert again.stdout.strip() == f"@staging -> {other} (was {good})"
    shown = workbench("runs", "show", "@staging", "--json", *place.sets())
    assert json.loads(shown.stdout)["id"] == other
    listed = workbench("models", "list", *place.sets())
    assert listed.code == 0 and "@staging" in listed.stdout and "test_accuracy" in listed.stdout
    unknown = workbench("runs", "show", "@nope", *place.sets())
    assert unknown.code == 1 and unknown.stderr.strip().endswith("aliases: @staging")
    removed = workbench("models", "alias", "rm", "staging", "--reason", "retired", *place.sets())
    assert removed.stdout.strip() == f"@staging removed (was {other})"
    moves = json.loads(workbench("models", "history", "staging", "--json", *place.sets()).stdout)
    assert [(m["run_id"], m["previous"], m["reason"]) for m in moves] == [
        (good, None, "first cut"),
        (other, good, None),
        (None, other, "retired"),
    ]
    assert all("@" in m["moved_by"] for m in moves)
    text = workbench("models", "history", "staging", *place.sets()).stdout
    assert "(removed)" in text and "first cut" in text


def test_the_gate_moves_the_alias_only_when_its_figures_hold(runs):
    place, good, other, _failed = runs
    tracker = Tracker(place.db)
    first = promote(
        tracker, good, "champion", require=["test_accuracy>=0.5"], better_than="champion", metric="test_accuracy"
    )
    assert first.moved.run_id == good and "no @champion yet, so nothing to beat" in first.line
    with pytest.raises(GateClosed, match=rf"run {good} not promoted to @champion: test_accuracy [\d.]+ is not >= 1.01"):
        promote(tracker, good, "champion", require=["test_accuracy>=1.01"])
    with pytest.raises(GateClosed, match=rf"run {good} is @champion already"):
        promote(tracker, good, "champion", better_than="champion", metric="test_accuracy")

    import io

    import pyarrow.parquet as pq

    rows = pq.read_table(io.BytesIO((place.store / "runs" / other / "prepare" / "test.parquet").read_bytes()))
    ours, theirs = score_on(tracker, other, rows, "test_accuracy"), score_on(tracker, good, rows, "test_accuracy")
    assert ours == pytest.approx(tracker.get_run(other)["metrics"]["test_accuracy"])  # the same rows, the same model
    if ours > theirs:
        outcome = promote(tracker, other, "champion", better_than="champion", metric="test_accuracy", reason="nightly")
        assert outcome.moved.previous == good and history(tracker, "champion")[-1].comparison["rival"] == theirs
    else:
        with pytest.raises(GateClosed, match=r"test_accuracy [\d.]+ is not above @champion"):
            promote(tracker, other, "champion", better_than="champion", metric="test_accuracy")
        assert resolve(tracker, "@champion") == good
    with pytest.raises(ParameterError, match=r"--better-than needs --metric"):
        promote(tracker, other, "champion", better_than="champion")
    with pytest.raises(ParameterError, match=rf"--require 'test_rmse<1': run {other} recorded no test_rmse; it has "):
        promote(tracker, other, "champion", require=["test_rmse<1"])  # classes have no RMSE


def test_promote_on_the_command_line_exits_1_with_the_figures(runs):
    place, good, _other, _failed = runs
    closed = workbench("models", "promote", good, "--alias", "gated", "--require", "test_accuracy>=1.01", *place.sets())
    assert closed.code == 1
    assert closed.stderr.strip().startswith(f"error: run {good} not promoted to @gated: test_accuracy ")
    assert "gated" not in current(Tracker(place.db))
    opened = workbench("models", "promote", good, "--alias", "gated", "--require", "test_accuracy>=0.5", *place.sets())
    assert opened.code == 0 and opened.stdout.startswith(f"@gated -> {good}: test_accuracy "), opened.stderr


def test_scoring_by_alias_and_an_unknown_alias_before_a_run(runs):
    place, good, _other, _failed = runs
    set_alias(Tracker(place.db), "prod", good)
    scored = workbench("run", "--steps=score", *place.sets("score.model_run=@prod"))
    assert scored.code == 0, scored.stderr
    run = json.loads(workbench("runs", "show", scored.stdout.split()[1], "--json", *place.sets()).stdout)
    info = json.loads((Path(place.store) / "runs" / run["id"] / "score" / "model.json").read_text())
    assert info["model_run"] == good
    before = len(models(Tracker(place.db), 100))
    unknown = workbench("run", "--steps=score", *place.sets("score.model_run=@nightly"))
    assert unknown.code == 2
    assert unknown.stderr.strip().startswith("error: score.model_run '@nightly': no alias 'nightly'")
    assert "@prod" in unknown.stderr
    assert len(models(Tracker(place.db), 100)) == before
    remove_alias(Tracker(place.db), "prod")
