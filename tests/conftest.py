"""Shared fixtures: scratch stores and DBs, and one small end-to-end run reused by several tests.

Plain helpers (the CLI runner, places, run copies, local services) live in ``tests/support``;
the names below stay importable from here for older imports. Every test carries one marker,
``unit``, ``services`` or ``e2e`` (registered in pyproject.toml): see ``pytest_collection_modifyitems``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import ROOT, SMALL, CLIResult, Place, Run, copy_run, sets, workbench
from support.locals3 import S3Server

__all__ = ["ROOT", "SMALL", "CLIResult", "Place", "Run", "S3Server", "copy_run", "sets", "workbench"]

KINDS = ("unit", "services", "e2e")

# fixtures that decide a test's kind: a test using one is at least that kind
SERVICE_FIXTURES = {"s3_server", "postgres"}
E2E_FIXTURES = {"small_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked in its module or by hand keeps its kind; otherwise the fixtures it uses decide
    (``small_run``: e2e; ``s3_server``, ``postgres``: services; nbval's notebook cells: e2e), else
    it is ``unit``. A test that runs ``workbench run``, papermill or torchrun without those
    fixtures is marked ``e2e`` by hand."""
    for item in items:
        given = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
        if len(given) > 1:  # markers add up (module + test): `-m unit` would select an e2e test
            raise pytest.UsageError(f"{item.nodeid} is marked {sorted(given)}; give each test one kind")
        if given:
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        notebook = item.path.suffix == ".ipynb"  # nbval's cells (`--nbval-lax notebooks`) run in a kernel
        kind = "e2e" if notebook or fixtures & E2E_FIXTURES else "services" if fixtures & SERVICE_FIXTURES else "unit"
        item.add_marker(kind)


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path / "store", f"sqlite:///{tmp_path}/tracking.db")


@pytest.fixture
def private_run(small_run: Run, tmp_path: Path) -> Run:
    """A copy of the shared small run, for a test that changes it (its report, its store)."""
    return copy_run(small_run, tmp_path / "copy")


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
    """prepare + train (3 epochs) + export + validate once for the unit tests of later stages; each
    step then stands finished, as its notebook's cells would leave it, so the model is one that
    `latest` picks and that scores without a warning."""
    from workbench.config.schema import DataParams, ExportParams, TrainParams, ValidateParams
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model
    from workbench.stages.validate_mxnet import validate_model

    prepare_data(stage_ctx_factory("prepare"), DataParams(), seed=0)
    train = train_model(stage_ctx_factory("train"), TrainParams(epochs=3, batch_size=64, device="cpu"), seed=0)
    exported = export_onnx(stage_ctx_factory("export"), ExportParams())
    ctx = stage_ctx_factory("validate")
    validate_model(ctx, ValidateParams()).check()
    for step in ("prepare", "train", "export", "validate"):
        ctx.tracker.notebook_step("unit", step, "finished")
    return train, exported


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
