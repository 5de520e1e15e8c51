"""The documented options end to end: models on image-shaped and other tables, through `workbench run`.

Small sizes (two epochs) keep the matrix inside CI's budget; what is checked is that each path runs
to the end with the right artifacts, or stops in one line that says what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import FEW, ROOT

from workbench.tracking.tracker import Tracker

pytestmark = pytest.mark.e2e

USER_MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    """A user's own model: any table, a hidden layer of its own width."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, 48), nn.Tanh(), nn.Linear(48, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
'''


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """palmerpenguins' measurements (5 numeric features, not an image) with species as the label."""
    from palmerpenguins import load_penguins

    columns = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year", "species"]
    path = tmp_path_factory.mktemp("tables") / "penguins.csv"
    load_penguins()[columns].dropna().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("usermodel")
    (folder / "mynets.py").write_text(USER_MODULE)
    return folder


def _run(place, *items: str, steps: str = "", pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    chosen = ["--steps", steps] if steps else []
    return subprocess.run(
        [sys.executable, "-m", "workbench", "run", *chosen, *place.sets(*items)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("table", "model"),
    [("digits", "mlp"), ("digits", "mynets:Net"), ("penguins", "mlp"), ("penguins", "mynets:Net")],
)
def test_models_on_tables(place, penguins, user_module, table, model):
    source = "bundled:digits" if table == "digits" else str(penguins)
    target = "label" if table == "digits" else "species"
    proc = _run(
        place, *FEW, f"data.source={source}", f"data.target={target}", f"train.model={model}", pythonpath=user_module
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split()[1]
    run = Tracker(place.db).get_run(run_id)
    assert run["status"] == "finished" and run["metrics"]["parity_pass"] == 1.0
    folder = place.store / "runs" / run_id
    config = json.loads((folder / "train" / "model_config.json").read_text())
    assert config["model"] == model and config["in_features"] == (64 if table == "digits" else 5)
    schema = json.loads((folder / "prepare" / "schema.json").read_text())
    if table == "penguins":
        assert schema["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
        scored = _run(
            place,
            f"score.source={penguins}",
            f"score.model_run={run_id}",
            "score.backend=torch",
            steps="score",
            pythonpath=user_module,
        )
        assert scored.returncode == 0, scored.stderr[-3000:]
        metrics = Tracker(place.db).get_run(scored.stdout.split()[1])["metrics"]
        assert metrics["rows_scored"] == 342 and 0 <= metrics["score_accuracy"] <= 1


def test_the_cnn_on_a_table_that_is_no_image_says_what_to_use(place, penguins):
    proc = _run(place, *FEW, f"data.source={penguins}", "data.target=species", "train.model=cnn")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: step train failed: ModelError: train.model 'cnn' needs square images (e.g. 64 features for 8x8); "
        "got 5 features; use 'mlp'"
    )


def test_streamed_splits_and_compile_through_workbench_run(place):
    """Splits streamed from Parquet (a tiny memory budget) and train.compile, end to end on CPU."""
    proc = _run(place, *FEW, "train.max_memory_gb=0.000001", "train.shuffle_buffer=512", "train.compile=on")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split()[1]
    run = Tracker(place.db).get_run(run_id)
    assert run["status"] == "finished" and run["metrics"]["parity_pass"] == 1.0
    environment = json.loads((place.store / "runs" / run_id / "train" / "environment.json").read_text())
    assert environment["train_data"] == "streamed" and environment["step"] == "eager"
    trained = (place.store / "runs" / run_id / "02_train.ipynb").read_text()
    assert "train.compile: off on CPU" in trained and "train streamed" in trained
