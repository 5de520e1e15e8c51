"""The web app on a large tracking database: server time of the runs table and of a comparison.

Fills a tracking database with many runs (default 10,000 runs, 30 parameters, 40 final metrics
and 30 epochs of 4 per-epoch metrics each: 1.9 million rows) by bulk inserts (COPY on
PostgreSQL), then asks the app in-process, as a browser would, and prints the median server time
of each page over a few requests (and the fastest):

- the runs table's first page sorted by a metric and filtered by a parameter (target: 300 ms),
- its next page,
- a comparison of 20 runs (target: 500 ms),

on SQLite and on a throwaway PostgreSQL server (started as the tests start theirs).

    python benchmarks/ui_load.py [--runs 10000] [--backends sqlite,postgres] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from workbench.tracking.tables import metrics, params, run_tags, runs, steps
from workbench.tracking.tracker import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' PostgreSQL helper
from support.localpg import throwaway_postgres

HISTORY = ("train_loss", "val_loss", "val_accuracy", "lr")
STEPS = ("prepare", "train", "export", "validate")
TARGETS = {"first page": 300.0, "compare 20 runs": 500.0}  # milliseconds


def tables(first: int, count: int, n_params: int, n_metrics: int, epochs: int) -> dict[str, list[dict[str, Any]]]:
    """Every row of runs ``first`` to ``first + count``: a learning-rate sweep over models, scores to match."""
    rng = np.random.default_rng(first)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows: dict[str, list[dict[str, Any]]] = {"runs": [], "params": [], "metrics": [], "run_tags": [], "steps": []}
    extra_metrics = [f"m_{i:02d}" for i in range(max(n_metrics - 4, 0))]
    for i in range(first, first + count):
        run_id = f"run-{i:06d}"
        began = start + timedelta(minutes=i)
        rows["runs"].append(
            {
                "id": run_id,
                "status": "finished" if i % 17 else "failed",
                "started_at": began,
                "finished_at": began + timedelta(seconds=30 + i % 90),
                "store": "artifacts",
                "launcher": "workbench",
                "name": f"sweep-{i % 50}",
            }
        )
        values: dict[str, Any] = {
            "train.lr": float(10 ** rng.uniform(-4, -1)),
            "train.model": ("mlp", "cnn", "auto")[i % 3],
            "train.width": int(2 ** (5 + i % 4)),
            "seed": i % 7,
        }
        for p in range(n_params - len(values)):
            values[f"extra.p{p:02d}"] = float(rng.random()) if p % 2 else f"choice-{p % 5}"
        rows["params"] += [
            {"run_id": run_id, "key": k, "value": json.dumps(v), "origin": "defaults"} for k, v in values.items()
        ]
        accuracy = float(0.8 + 0.19 * rng.random())
        finals = {
            "val_accuracy": accuracy,
            "val_loss": 1 - accuracy,
            "test_accuracy": accuracy - 0.01,
            "parity_pass": 1,
        }
        finals |= {k: float(rng.random()) for k in extra_metrics}
        for key, value in list(finals.items())[:n_metrics]:
            rows["metrics"].append(
                {"run_id": run_id, "step": "train", "key": key, "value": float(value), "epoch": None}
            )
        for epoch in range(epochs):
            fraction = (epoch + 1) / epochs
            for key in HISTORY:
                value = {"train_loss": 2 - fraction, "val_loss": 2.1 - fraction, "val_accuracy": accuracy * fraction}
                rows["metrics"].append(
                    {"run_id": run_id, "step": "train", "key": key, "value": value.get(key, 0.01), "epoch": epoch}
                )
        rows["run_tags"].append({"run_id": run_id, "key": "team", "value": ("vision", "tabular")[i % 2]})
        rows["steps"] += [
            {"run_id": run_id, "name": name, "position": p, "status": "finished", "duration_s": 5.0 + p}
            for p, name in enumerate(STEPS)
        ]
    return rows


TABLES = {"runs": runs, "params": params, "metrics": metrics, "run_tags": run_tags, "steps": steps}


def fill(url: str, args: argparse.Namespace) -> tuple[int, float]:
    """Create the schema through the tracker, then insert every row, a thousand runs at a time;
    the rows written and the seconds taken."""
    tracker = Tracker(url)
    began, written = time.perf_counter(), 0
    for first in range(0, args.runs, 1000):
        rows = tables(first, min(1000, args.runs - first), args.params, args.metrics, args.epochs)
        written += sum(len(v) for v in rows.values())
        if tracker.engine.dialect.name == "postgresql":
            _copy(tracker, rows)
        else:
            with tracker.engine.begin() as conn:
                for name, table in TABLES.items():
                    conn.execute(insert(table), rows[name])
    with tracker.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    tracker.engine.dispose()
    return written, time.perf_counter() - began


def _copy(tracker: Tracker, rows: dict[str, list[dict[str, Any]]]) -> None:
    raw = tracker.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for name, table in TABLES.items():
            columns = [c.name for c in table.columns if any(c.name in r for r in rows[name][:1])]
            with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows[name]:
                    copy.write_row([row.get(c) for c in columns])
        raw.commit()
    finally:
        raw.close()


def timed(client: Any, path: str, repeat: int) -> tuple[float, float, int]:
    """Median and fastest milliseconds of ``repeat`` requests (after one that warms the caches), and
    the body's size. On a shared machine the fastest says what the app costs, the median what
    the neighbours add."""
    first = client.get(path)
    assert first.status_code == 200, first.text[:300]
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200
    return statistics.median(times), min(times), len(first.content)


def measure(url: str, count: int, repeat: int) -> dict[str, tuple[float, float, int]]:
    with warnings.catch_warnings():  # starlette would rather have httpx2; httpx is what the tests use
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from workbench.ui.app import create_app

    client = TestClient(create_app(Tracker(url, create=False)))
    query = "where=train.lr%3E0.001&sort=-val_accuracy&columns=train.lr,train.model,val_accuracy,test_accuracy"
    compared = ",".join(f"run-{i:06d}" for i in range(0, count, max(count // 20, 1))[:20])
    pages = {
        "first page": f"/?{query}",
        "next page": f"/?{query}&offset=20",
        "api first page": f"/api/runs?{query}",
        "compare 20 runs": f"/compare?runs={compared}",
    }
    return {name: timed(client, path, repeat) for name, path in pages.items()}


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="workbench-ui-") as folder:
            yield f"sqlite:///{folder}/tracking.db"
    else:
        with throwaway_postgres() as new_database:
            yield new_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--params", type=int, default=30)
    parser.add_argument("--metrics", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    print(f"{args.runs:,} runs, {args.params} parameters, {args.metrics} metrics, {args.epochs} epochs of history")
    for backend in args.backends.split(","):
        with database(backend) as url:
            written, seconds = fill(url, args)
            print(f"\n{backend}: {written:,} rows written in {seconds:.1f} s")
            print(f"  {'server time':<16} {'median':>9} {'fastest':>9} {'body':>10}")
            for name, (median, fastest, size) in measure(url, args.runs, args.repeat).items():
                target = TARGETS.get(name)
                verdict = f"target {target:.0f} ms: {'met' if median <= target else 'MISSED'}" if target else ""
                print(f"  {name:<16} {median:6.1f} ms {fastest:6.1f} ms {size / 1024:6.1f} KiB  {verdict}")


if __name__ == "__main__":
    main()
