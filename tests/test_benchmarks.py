"""The benchmark scripts still run (at toy sizes; their figures are read by people, not asserted)."""

from __future__ import annotations

import os
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
            "scale_out.py", ["--rows", "20000", "--files", "4"], "prepare  dask local:2", marks=pytest.mark.e2e
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
        pytest.param(
            "serve_load.py",
            ["--bound-only", "--seconds", "0.3"],
            "(f) worst from 100 rows",
            marks=pytest.mark.e2e,
        ),
    ],
)
def test_benchmark_runs(script, args, says):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert says in proc.stdout


# serve_peers.py installs MLServer and BentoML from PyPI, which tests never reach: what runs here is
# its answer when an environment cannot be built, and its reuse of one that was.
def _no_registry(tmp_path) -> dict[str, str]:
    """pip with no index and an empty wheel folder: as on a machine without the network."""
    (tmp_path / "no-wheels").mkdir()
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "no-wheels")}


@pytest.mark.e2e
def test_serve_peers_says_in_one_line_when_a_peer_cannot_be_installed(tmp_path):
    build = tmp_path / "peers"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve_peers.py"), "--build", str(build)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_no_registry(tmp_path),
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot build the mlserver environment in {build / 'mlserver'}: ")
    assert "pip install mlserver==1.7.1" in lines[0] and "No matching distribution found" in lines[0]
    assert not (build / "mlserver").exists()  # nothing half-built is taken for done next time
    assert "training" not in proc.stdout  # it failed before any work


@pytest.mark.e2e  # builds a venv before pip fails
def test_serve_peers_reuses_a_built_environment_and_rebuilds_on_new_pins(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from serve_peers import environment

    for key, value in _no_registry(tmp_path).items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "peers" / "bentoml"
    folder.mkdir(parents=True)
    (folder / ".installed").write_text("bentoml==1.4.40\nonnxruntime==1.32.0\n")
    assert environment(tmp_path / "peers", "bentoml", ["bentoml==1.4.40", "onnxruntime==1.32.0"]) == folder
    with pytest.raises(SystemExit, match=r"cannot build the bentoml environment .*pip install bentoml==1.4.41"):
        environment(tmp_path / "peers", "bentoml", ["bentoml==1.4.41", "onnxruntime==1.32.0"])
    assert not folder.exists()
