"""Driving the real ``workbench`` command from tests: scratch places, CLI results, copies of runs.

Fixtures live in ``tests/conftest.py``; the plain helpers they and the tests share live here.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["train.epochs=3", "train.batch_size=64"]
FEW = ["train.epochs=2", "train.batch_size=64"]  # where only the path matters, not the accuracy


@dataclass
class CLIResult:
    code: int
    stdout: str
    stderr: str


def workbench(*args: str, cwd: Path = ROOT, env: Mapping[str, str] | None = None) -> CLIResult:
    """Run the real command in a fresh interpreter, as a user would (``env``: extra variables)."""
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env} if env else None,
    )
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


def sets(*items: str) -> list[str]:
    return [f"--set={item}" for item in items]


@dataclass
class Place:
    """A scratch store and SQLite DB for one test."""

    store: Path
    db: str

    def sets(self, *extra: str) -> list[str]:
        return sets(f"store={self.store}", f"db={self.db}", *extra)


@dataclass
class Run:
    place: Place
    result: CLIResult
    run_id: str
    folder: Path


def copy_run(run: Run, tmp_path: Path) -> Run:
    """A private copy of a shared run (its store and SQLite DB, the run recorded in the copied
    store), for a test that changes it: no test mutates a run another test reads."""
    store = tmp_path / "store"
    shutil.copytree(run.place.store, store)
    db = tmp_path / "tracking.db"
    source = sqlite3.connect(run.place.db.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as copy:
        source.backup(copy)
        copy.execute("UPDATE runs SET store = ? WHERE id = ?", (str(store), run.run_id))
    source.close()
    place = Place(store, f"sqlite:///{db}")
    return Run(place, run.result, run.run_id, store / "runs" / run.run_id)


def run_id_of(stdout: str) -> str:
    """`workbench run` prints `run <id> finished` first."""
    return stdout.split()[1]


def checked_output(notebook: Path) -> str:
    """The text printed by the executed notebook's cells that nbval checks (tagged nbval-check-output)."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    return "".join(
        o.get("text", "")
        for c in cells
        if "nbval-check-output" in c.metadata.get("tags", [])
        for o in c.outputs
        if o.output_type == "stream"
    )


def project_copy(target: Path) -> Path:
    """A private copy of the project (package, notebooks, parameters, deploy scripts) at ``target``,
    to run with ``PYTHONPATH=target``: a test may change a file of the package honestly, and what
    the runs execute stays the same while the checkout changes."""
    for part in ("workbench", "notebooks", "parameters", "deploy"):
        shutil.copytree(ROOT / part, target / part, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return target
