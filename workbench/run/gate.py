"""The promotion gate: move an alias to a run only when its figures hold, and say why in one line.

``--require 'test_roc_auc>=0.80'`` reads the candidate's recorded metrics. ``--better-than
champion --metric test_roc_auc`` is decided on the same rows: the candidate's test split is scored
by both models in onnxruntime, each through its own encoding, so a model trained on other data (or
an older split) is compared fairly, not by metrics measured on different rows. The figures are
recorded with the move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import DataError, ParameterError, WorkbenchError
from workbench.storage import open_store
from workbench.storage.catalog import ENCODING, ONNX_MODEL, TEST_SPLIT, RunLayout
from workbench.tracking.aliases import Move, alias_name, current, is_alias, resolve, set_alias
from workbench.tracking.queries import better, parse_condition
from workbench.tracking.tracker import Tracker

BATCH_ROWS = 65_536


class GateClosed(WorkbenchError):
    """The candidate did not pass the gate: the alias stays where it was (exit 1, one line of figures)."""


@dataclass
class Outcome:
    moved: Move
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def line(self) -> str:
        said = f"@{self.moved.name} -> {self.moved.run_id}"
        if self.moved.previous:
            said += f" (was {self.moved.previous})"
        checks = self.figures.get("said", [])
        return said + (f": {'; '.join(checks)}" if checks else "")


def resolve_run(tracker: Tracker, spec: str, key: str = "RUN") -> str:
    """A run named by id, ``@alias`` or ``latest`` (the newest model that passed validation)."""
    if is_alias(spec):
        return resolve(tracker, spec, key)
    if spec == "latest":
        found = tracker.latest_model()
        if found is None:
            raise ParameterError(f"{key} 'latest': no run has an exported model that passed validation yet")
        return found
    if not tracker.has_run(spec):
        raise ParameterError(f"{key} {spec!r}: no such run in the tracking database; `workbench runs` lists them")
    return spec


def _required(tracker: Tracker, run_id: str, texts: list[str]) -> tuple[list[str], list[str]]:
    """What each condition says of the candidate's figures, and those that fail."""
    final = tracker.get_run(run_id)["metrics"]
    said, failed = [], []
    for text in texts:
        cond = parse_condition(text)
        if cond.key not in final:
            known = ", ".join(sorted(k for k in final if k.startswith("test_"))) or "no test metrics"
            raise ParameterError(f"--require {text!r}: run {run_id} recorded no {cond.key}; it has {known}")
        value = final[cond.key]
        line = f"{cond.key} {value:.4g} {cond.op} {cond.value}"
        said.append(line)
        if not _holds(value, cond.op, float(cond.value)):
            failed.append(line.replace(f" {cond.op} ", f" is not {cond.op} "))
    return said, failed


def _holds(value: float, op: str, bound: float) -> bool:
    return {
        "=": value == bound,
        "!=": value != bound,
        ">": value > bound,
        ">=": value >= bound,
        "<": value < bound,
        "<=": value <= bound,
    }[op]


def score_on(tracker: Tracker, run_id: str, rows: Any, metric: str) -> float:
    """``metric`` (a ``test_*`` name) of ``run_id``'s exported model on ``rows`` (an Arrow table
    holding the input columns and the target), through that model's own encoding."""
    from workbench.ml.encoding import Encoding
    from workbench.ml.evaluation import evaluate_classes, evaluate_numbers, softmax
    from workbench.ml.runtimes import ModelFiles, load_backend

    store = open_store(tracker.get_run(run_id)["store"])
    layout = RunLayout(run_id)
    encoding = Encoding.from_json(json.loads(store.read_bytes(layout.key(ENCODING))))
    target = encoding.target
    assert target is not None, "prepare writes the target into the encoding"
    if target.name not in rows.column_names:
        raise DataError(f"run {run_id}'s model predicts {target.name!r}, which the rows compared on do not hold")
    try:
        x = encoding.apply(rows)
    except DataError as exc:
        raise DataError(f"run {run_id}'s model cannot read the rows compared on: {exc}") from exc
    predict = load_backend("onnxruntime", ModelFiles.of_onnx(store.read_bytes(layout.key(ONNX_MODEL))))
    outputs = np.concatenate([np.asarray(predict(x[i : i + BATCH_ROWS])) for i in range(0, len(x), BATCH_ROWS)])
    truth = rows.column(target.name).to_pandas()
    if target.regression:
        evaluation = evaluate_numbers(target.encode(truth).astype(np.float64), target.predicted(outputs))
    else:
        evaluation = evaluate_classes(target.encode(truth), softmax(outputs), list(target.classes or []))
    name = metric.removeprefix("test_")
    if name not in evaluation.metrics:
        known = ", ".join(f"test_{k}" for k in evaluation.metrics)
        raise ParameterError(f"--metric {metric!r}: not measured for run {run_id}'s model; use one of {known}")
    return evaluation.metrics[name]


def promote(
    tracker: Tracker,
    candidate: str,
    alias: str,
    require: list[str] | None = None,
    better_than: str | None = None,
    metric: str | None = None,
    reason: str | None = None,
) -> Outcome:
    """Move ``alias`` to ``candidate`` when every condition holds; else raise :class:`GateClosed`
    with the figures, and leave the alias where it was."""
    from workbench.storage.parts import read_table

    name = alias_name(alias, "--alias")
    if better_than is not None and not metric:
        raise ParameterError("--better-than needs --metric, the test metric to compare on, e.g. --metric test_roc_auc")
    if metric and better(metric) is None:
        raise ParameterError(f"--metric {metric!r}: not a score with a better direction; e.g. test_roc_auc, test_rmse")
    said, failed = _required(tracker, candidate, require or [])
    figures: dict[str, Any] = {"require": list(require or []), "said": said}
    if better_than is not None:
        rival_name = alias_name(better_than, "--better-than")
        rival = current(tracker).get(rival_name)
        if rival is None:
            said.append(f"no @{rival_name} yet, so nothing to beat")
        elif rival == candidate:
            failed.append(f"run {candidate} is @{rival_name} already")
        else:
            store = open_store(tracker.get_run(candidate)["store"])
            split = RunLayout(candidate).key(TEST_SPLIT)
            rows = read_table(store, split)  # one file, or the parts engine dask wrote
            if not rows.num_rows:
                raise DataError(f"run {candidate} held out no test rows (data.test_fraction 0): nothing to compare on")
            ours, theirs = (
                score_on(tracker, candidate, rows, metric or ""),
                score_on(tracker, rival, rows, metric or ""),
            )
            direction = better(metric or "")
            wins = ours > theirs if direction == "higher" else ours < theirs
            line = f"{metric} {ours:.4g} vs @{rival_name} ({rival}) {theirs:.4g} on run {candidate}'s {rows.num_rows:,} test rows"
            figures |= {"metric": metric, "candidate": ours, "rival": theirs, "rival_run": rival, "rows": rows.num_rows}
            said.append(line)
            if not wins:
                failed.append(line.replace(" vs ", f" is not {'above' if direction == 'higher' else 'below'} ", 1))
    if failed:
        raise GateClosed(f"run {candidate} not promoted to @{name}: {'; '.join(failed)}")
    return Outcome(set_alias(tracker, name, candidate, reason, figures), figures)
