"""Shared fixtures: scratch stores and DBs, and one small end-to-end run reused by several tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.epochs=3", "train.batch_size=64"]


@dataclass
class CLIResult:
    code: int
    stdout: str
    stderr: str


def workbench(*args: str, cwd: Path = ROOT) -> CLIResult:
    """Run the real command in a fresh interpreter, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", *args], cwd=cwd, capture_output=True, text=True, timeout=600
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


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path / "store", f"sqlite:///{tmp_path}/tracking.db")


@dataclass
class Run:
    place: Place
    result: CLIResult
    run_id: str
    folder: Path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One `workbench run` at small parameters, shared by the end-to-end and CLI tests."""
    tmp = tmp_path_factory.mktemp("e2e")
    where = Place(tmp / "store", f"sqlite:///{tmp}/tracking.db")
    result = workbench("run", *where.sets(*SMALL))
    assert result.code == 0, result.stderr
    run_id = result.stdout.split()[1]
    return Run(where, result, run_id, where.store / "runs" / run_id)


@pytest.fixture(scope="session")
def stage_ctx_factory(tmp_path_factory: pytest.TempPathFactory):
    """Contexts for calling stage functions in-process against one scratch run."""
    from workbench.run.context import step_context

    tmp = tmp_path_factory.mktemp("stages")

    def make(step: str, run_id: str = "unit") -> object:
        return step_context(step, run_id=run_id, store=str(tmp / "store"), db=f"sqlite:///{tmp}/tracking.db")

    return make


@pytest.fixture(scope="session")
def trained(stage_ctx_factory):
    """prepare + train (3 epochs) + export once for the unit tests of later stages."""
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model

    prepare_data(stage_ctx_factory("prepare"), "bundled:digits", "label", 0.15, 0.15, 0)
    train = train_model(stage_ctx_factory("train"), "cnn", 3, 64, 0.002, "cpu", True, 0)
    exported = export_onnx(stage_ctx_factory("export"), 12, 1e-4)
    return train, exported


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 endpoint over HTTP (moto's server on 127.0.0.1), for this process and its children."""
    import os

    from support.locals3 import moto_endpoint, s3_environment

    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log, moto_endpoint(log) as endpoint:
        env = s3_environment(endpoint)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield S3Server(endpoint, env)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1; yields a factory of fresh database URLs."""
    from support.localpg import ServiceUnavailable, throwaway_postgres

    try:
        with throwaway_postgres() as new_database:
            yield new_database
    except ServiceUnavailable as exc:
        pytest.fail(f"{exc} (make test and .ci/run install it)")
