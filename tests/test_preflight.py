"""What a run would fail on later is refused before it starts (exit 2, no run): a CUDA device the
machine does not have, a model run for scoring that names nothing."""

from __future__ import annotations

import pytest
from support.cli import workbench

from workbench.tracking.tracker import Tracker


@pytest.mark.parametrize(
    ("steps", "given", "message"),
    [
        (
            "prepare,train",
            "train.device=cuda:99",
            r"train.device in --set train.device=cuda:99: (no CUDA device is visible here; use auto or cpu"
            r"|only \d+ CUDA device\(s\); pick a lower index)",
        ),
        (
            "score",
            "score.model_run=nope",
            r"score.model_run in --set score.model_run=nope: 'nope' is not a run in db '.*'; `workbench runs` lists",
        ),
        (
            "score",
            "score.model_run=latest",
            r"score.model_run in --set score.model_run=latest: 'latest' names no run, since no run in db .* has an "
            r"exported model that passed validation",
        ),
    ],
)
def test_what_a_step_would_fail_on_is_refused_before_a_run(place, steps, given, message):
    import re

    result = workbench("run", "--steps", steps, *place.sets(given))
    assert result.code == 2, result.stderr
    assert re.fullmatch(rf"error: {message}.*\n", result.stderr), result.stderr
    assert Tracker(place.db).list_runs() == [] and not (place.store / "runs").exists()
