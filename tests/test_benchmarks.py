"""The benchmark scripts still run (at toy sizes; their figures are read by people, not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.cli import ROOT


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        # publish.py starts its own PostgreSQL server
        pytest.param(
            "publish.py", ["--rows", "2000"], "faster than to_sql(method='multi')", marks=pytest.mark.services
        ),
        pytest.param(
            "prepare_large.py", ["--rows", "3000"], "parquet memory ratio (30,000 vs 3,000 rows)", marks=pytest.mark.e2e
        ),
        pytest.param(
            "prepare_large.py",
            ["--table", "mixed", "--rows", "2000", "--format", "parquet"],
            "parquet workbench rows/s / scikit-learn rows/s at 20,000 rows",
            marks=pytest.mark.e2e,
        ),
        pytest.param(
            "score_throughput.py",
            ["--rows", "5000", "--heavy-rows", "0", "--repeat", "1"],
            "memory ratio (10x rows)",
            marks=pytest.mark.e2e,
        ),
        pytest.param(
            "ui_load.py",
            ["--runs", "200", "--repeat", "1", "--backends", "sqlite"],
            "compare 20 runs",
            marks=pytest.mark.e2e,
        ),
        pytest.param(
            "rerun.py",
            ["--rows", "3000", "--repeat", "1", "--set", "train.epochs=1"],
            "keys of 4 steps, the same file again (remembered)",
            marks=pytest.mark.e2e,
        ),
        pytest.param(
            "serve_load.py", ["--seconds", "0.3", "--clients", "1,4"], "bound on this machine", marks=pytest.mark.e2e
        ),
    ],
)
def test_benchmark_runs(script, args, says):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert says in proc.stdout
