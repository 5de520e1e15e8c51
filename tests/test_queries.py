"""Questions over many runs, on SQLite and on a real PostgreSQL server: filters, sorts, pages, columns,
and runs side by side."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from workbench.errors import ParameterError, TrackingError
from workbench.storage.base import ArtifactInfo
from workbench.tracking.queries import (
    Condition,
    RunQuery,
    better,
    compare_runs,
    find_runs,
    parameters_and_metrics,
    parse_condition,
    unrecorded,
)
from workbench.tracking.tables import runs, steps
from workbench.tracking.tracker import Tracker

# id: (parameters, final metrics, seconds it took, tags, name)
RUNS = {
    "r1": (
        {"train.lr": 0.1, "train.model": "mlp", "data.target": "2024", "train.amp": True},
        {"val_accuracy": 0.80, "val_loss": 0.5},
        30,
        {"team": "a"},
        "Wide MLP",
    ),
    "r2": (
        {"train.lr": 0.01, "train.model": "cnn", "data.target": "label", "train.amp": False},
        {"val_accuracy": 0.95, "val_loss": 0.2},
        10,
        {"team": "b"},
        "cnn 100%",
    ),
    "r3": (
        {"train.lr": 1e-05, "train.model": "mlp", "data.target": "label", "train.amp": True},
        {"val_accuracy": 0.90, "val_loss": 0.3},
        20,
        {"team": "a", "kind": "sweep"},
        None,
    ),
    "r4": (
        {"train.lr": 0.002, "train.model": "mlp", "data.target": "label", "data.drop": ["id", "email"]},
        {},
        40,
        {},
        "broken",
    ),
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def tracker(request, tmp_path) -> Tracker:
    """Four runs with known parameters, metrics, durations and tags, in each kind of database."""
    url = f"sqlite:///{tmp_path}/q.db" if request.param == "sqlite" else request.getfixturevalue("postgres")()
    tracker = Tracker(url)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for n, (run_id, (values, final, seconds, tags, name)) in enumerate(RUNS.items()):
        tracker.create_run("/store", values, {}, run_id=run_id, name=name, tags=tags)
        tracker.plan_steps(run_id, ["prepare", "train"])
        for epoch in (1, 2, 3):
            tracker.log_metrics(run_id, "train", {"val_loss": 1 / (epoch + n)}, epoch=epoch)
        tracker.log_metrics(run_id, "train", final)
        tracker.finish_step(run_id, "prepare", "finished", 1.0 + n)
        tracker.finish_run(run_id, "failed" if run_id == "r4" else "finished")
        began = start + timedelta(hours=n)
        with tracker.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(started_at=began, finished_at=began + timedelta(seconds=seconds))
            )
    tracker.log_metrics("r2", "validate", {"val_accuracy": 0.97})  # a step run again: the latest record counts
    return tracker


def ids(tracker: Tracker, **query) -> list[str]:
    return [row.id for row in find_runs(tracker, RunQuery(**query)).rows]


def where(*texts: str) -> tuple[Condition, ...]:
    return tuple(parse_condition(t) for t in texts)


def test_newest_first_by_default_with_names_tags_and_durations(tracker):
    page = find_runs(tracker, RunQuery())
    assert [r.id for r in page.rows] == ["r4", "r3", "r2", "r1"] and page.total == 4
    r1 = page.rows[-1]
    assert (r1.name, r1.status, r1.tags, r1.duration_s) == ("Wide MLP", "finished", {"team": "a"}, 30.0)
    assert r1.started_at == "2026-12-01T00:00:00+00:00" and r1.values == {}


def test_parameters_filter_as_text_and_as_numbers(tracker):
    assert ids(tracker, where=where("train.model=mlp")) == ["r4", "r3", "r1"]
    assert ids(tracker, where=where("train.model!=mlp")) == ["r2"]
    assert ids(tracker, where=where("train.lr>0.001")) == ["r4", "r2", "r1"]
    assert ids(tracker, where=where("train.lr<=0.002", "train.model=mlp")) == ["r4", "r3"]
    assert ids(tracker, where=where("train.lr=1e-5")) == ["r3"]  # 1e-05 as stored, 1e-5 as typed
    assert ids(tracker, where=where("train.lr=0.01")) == ["r2"]
    # a text that spells a number is text: equal as typed, never bigger than a number
    assert ids(tracker, where=where("data.target=2024")) == ["r1"]
    assert ids(tracker, where=where("data.target>100")) == []
    assert ids(tracker, where=where("train.amp=true")) == ["r3", "r1"]
    assert ids(tracker, where=where("train.amp=false")) == ["r2"]


def test_metrics_and_run_fields_filter(tracker):
    assert ids(tracker, where=where("val_accuracy>0.85")) == ["r3", "r2"]
    assert ids(tracker, where=where("val_accuracy>=0.97")) == ["r2"]  # the latest record of r2
    assert ids(tracker, where=where("val_loss<0.4", "val_accuracy<0.95")) == ["r3"]
    assert ids(tracker, where=where("status!=finished")) == ["r4"]
    assert ids(tracker, where=where("name=broken")) == ["r4"]
    assert ids(tracker, where=where("duration_s>=30")) == ["r4", "r1"]
    assert ids(tracker, where=where("started_at>=2026-12-01T02:00")) == ["r4", "r3"]
    assert ids(tracker, where=where("started_at>=2026-12-01T04:00+02:00")) == ["r4", "r3"]  # 02:00 UTC


def test_tags_and_text_narrow_the_runs(tracker):
    assert ids(tracker, tags=(("team", "a"),)) == ["r3", "r1"]
    assert ids(tracker, tags=(("team", "a"), ("kind", "sweep"))) == ["r3"]
    assert ids(tracker, tags=(("team", "c"),)) == []
    assert ids(tracker, text="wide") == ["r1"]  # any case
    assert ids(tracker, text="R2") == ["r2"]  # the id
    assert ids(tracker, text="100%") == ["r2"]  # % is a character, not a wildcard
    assert ids(tracker, text="_") == []


def test_sorting_by_metrics_parameters_and_run_fields_puts_missing_values_last(tracker):
    assert ids(tracker, sort="-val_accuracy") == ["r2", "r3", "r1", "r4"]
    assert ids(tracker, sort="val_accuracy") == ["r1", "r3", "r2", "r4"]
    assert ids(tracker, sort="train.lr") == ["r3", "r4", "r2", "r1"]  # as numbers: "1e-05" is the smallest
    assert ids(tracker, sort="-train.lr") == ["r1", "r2", "r4", "r3"]
    assert ids(tracker, sort="-duration_s") == ["r4", "r1", "r3", "r2"]
    assert ids(tracker, sort="name") == ["r4", "r2", "r1", "r3"]  # r3 has no name
    assert ids(tracker, sort="-train.amp")[-1] == "r4"  # r4 has no train.amp


def test_pages_and_columns(tracker):
    query = RunQuery(sort="-val_accuracy", columns=("train.lr", "data.drop", "val_accuracy", "status"), limit=2)
    first = find_runs(tracker, query)
    assert first.total == 4 and [r.id for r in first.rows] == ["r2", "r3"]
    assert first.rows[0].values == {"train.lr": 0.01, "data.drop": None, "val_accuracy": 0.97, "status": "finished"}
    second = find_runs(tracker, RunQuery(**{**query.__dict__, "offset": 2}))
    assert [r.id for r in second.rows] == ["r1", "r4"] and second.total == 4
    assert second.rows[1].values == {
        "train.lr": 0.002,
        "data.drop": ["id", "email"],
        "val_accuracy": None,
        "status": "failed",
    }
    filtered = find_runs(tracker, RunQuery(where=where("train.model=mlp"), limit=1))
    assert filtered.total == 3 and len(filtered.rows) == 1


def test_every_parameter_and_metric_of_some_runs(tracker):
    both = parameters_and_metrics(tracker, ["r2", "r4"])
    assert both["r2"]["parameters"]["train.model"] == "cnn" and both["r2"]["metrics"]["val_accuracy"] == 0.97
    assert both["r4"]["metrics"] == {} and both["r4"]["parameters"]["data.drop"] == ["id", "email"]


def test_keys_no_run_records_are_found(tracker):
    assert unrecorded(tracker, ["train.lr", "train.lrr", "val_accuracy", "val_acc", "status"]) == [
        "train.lrr",
        "val_acc",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("train.lr", "expected KEY OP VALUE with OP one of = != > >= < <="),
        ("train.lr~0.1", "expected KEY OP VALUE"),
        ("=3", "expected KEY OP VALUE"),
        ("train.lr>", "expected KEY OP VALUE"),
        ("train.model>mlp", "> compares numbers, and 'mlp' is none"),
        ("val_accuracy=high", "metric val_accuracy is a number, and 'high' is none"),
        ("status>finished", "status takes = or != only"),
        ("started_at>yesterday", "'yesterday' is no time"),
    ],
)
def test_nonsense_conditions_are_one_line_naming_them(text, problem):
    with pytest.raises(ParameterError, match=r"^condition ") as caught:
        parse_condition(text)
    assert f"condition {text!r}: " in str(caught.value) and problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_conditions_read_spaces_and_double_equals():
    assert parse_condition(" train.lr >= 0.01 ") == Condition("train.lr", ">=", "0.01")
    assert parse_condition("train.model==mlp") == Condition("train.model", "=", "mlp")
    assert str(parse_condition("test_accuracy>0.9")) == "test_accuracy>0.9"


def test_a_bad_page_is_refused(tracker):
    with pytest.raises(ParameterError, match="limit 0: must be between 1 and 1000"):
        find_runs(tracker, RunQuery(limit=0))
    with pytest.raises(ParameterError, match="sort '-': name a key"):
        find_runs(tracker, RunQuery(sort="-"))


def test_which_way_a_metric_is_better():
    assert [
        better(k)
        for k in ("val_accuracy", "test_roc_auc", "test_f1_macro", "val_r2", "baseline_test_average_precision")
    ] == ["higher"] * 5
    assert [
        better(k) for k in ("val_loss", "test_log_loss", "test_rmse", "val_mae", "test_mape", "ort_max_abs_err")
    ] == ["lower"] * 6
    assert [better(k) for k in ("rows_total", "train_seconds", "parity_pass", "onnx_bytes")] == [None] * 4


def test_compare_shows_what_differs_the_best_steps_and_curves(tracker):
    from workbench.storage.catalog import FIT_PLOT, RunLayout

    tracker.log_artifact("r1", "train", ArtifactInfo(RunLayout("r1").key(FIT_PLOT), "/store/r1/fit.png", "ab" * 32, 9))
    with tracker.engine.begin() as conn:
        conn.execute(update(steps).where(steps.c.run_id == "r3", steps.c.name == "prepare").values(reused_from="r1"))
    seen = compare_runs(tracker, ["r1", "r3", "r2"])
    assert (
        [r.id for r in seen.runs] == ["r1", "r3", "r2"]
        and seen.runs[0].label == "Wide MLP"
        and seen.runs[1].label == "r3"
    )
    assert seen.params == {
        "data.target": ["2024", "label", "label"],
        "train.amp": [True, True, False],
        "train.lr": [0.1, 1e-05, 0.01],
        "train.model": ["mlp", "mlp", "cnn"],
    }
    accuracy, loss = seen.metrics["val_accuracy"], seen.metrics["val_loss"]
    assert accuracy.values == [0.80, 0.90, 0.97] and accuracy.best == (2,) and accuracy.better == "higher"
    assert loss.values == [0.5, 0.3, 0.2] and loss.best == (2,) and loss.better == "lower"
    assert seen.steps["prepare"][1].reused_from == "r1" and seen.steps["prepare"][0].duration_s == 1.0
    assert seen.steps["train"][0].status == "pending"
    assert seen.histories["val_loss"][0] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert seen.histories["val_loss"][1] == [(1, 1 / 3), (2, 0.25), (3, 0.2)]
    assert list(seen.figures) == [FIT_PLOT.title]
    assert seen.figures[FIT_PLOT.title][0].uri == "/store/r1/fit.png" and seen.figures[FIT_PLOT.title][1:] == [
        None,
        None,
    ]

    everything = compare_runs(tracker, ["r1", "r4"], all_params=True)
    assert everything.params["data.drop"] == [None, ["id", "email"]] and "train.model" in everything.params
    assert everything.metrics["val_accuracy"].best == ()  # one value is no contest


def test_compare_names_an_unknown_run_and_wants_two(tracker):
    with pytest.raises(TrackingError, match=r"^no run 'nope' in db .*; `workbench runs` lists the runs$"):
        compare_runs(tracker, ["r1", "nope"])
    with pytest.raises(ParameterError, match="compare needs two runs or more, got 1"):
        compare_runs(tracker, ["r1", "r1"])
