"""Passwords stay out of parameters, and so out of executed notebooks, reports and the tracking DB.

A URL with a password is refused in any parameter by the one schema (so by `workbench run`, a
notebook in JupyterLab or plain papermill, and a section built by hand alike), and every URL is
masked wherever parameters are written or shown, for runs recorded before that refusal too.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert
from support.cli import workbench

from workbench.config.parameters import load
from workbench.config.schema import DataParams
from workbench.errors import ParameterError
from workbench.run.notebooks import notebook_parameters
from workbench.run.report import render_report
from workbench.storage import open_store
from workbench.tracking.tables import params
from workbench.tracking.tracker import Tracker

SECRET = "hunter2"
WITH_PASSWORD = f"postgresql+psycopg://etl:{SECRET}@warehouse:5432/sales"


@pytest.mark.parametrize(
    "given",
    [
        f"data.source={WITH_PASSWORD}",  # a plain string, not the {url: ...} form
        f"score.source={WITH_PASSWORD}",
        f"data.source={{url: 'sqlite:///w.db', query: 'SELECT * FROM dblink(''{WITH_PASSWORD}'', ''x'')'}}",
        f"store=s3://AKIA:{SECRET}@bucket/prefix",
        f"serve.model=s3://AKIA:{SECRET}@bucket/models/model.tar.gz",
        f"data.target=see {WITH_PASSWORD}",
        f"data.drop=[id, '{WITH_PASSWORD}']",
        f"publish.url={WITH_PASSWORD}",
    ],
)
def test_a_password_in_any_parameter_is_refused(given):
    key = given.split("=", 1)[0]
    with pytest.raises(ParameterError, match=rf"^{key} in --set .*: must not hold a password .*PGPASSWORD") as err:
        load(sets=[given])
    assert SECRET not in str(err.value) and "***" in str(err.value)


def test_notebooks_refuse_it_through_the_same_schema():
    """JupyterLab and plain papermill validate a notebook's parameters with the schema too."""
    with pytest.raises(ParameterError, match=r"^data.source in notebook parameter source=.*must not hold a password"):
        notebook_parameters("prepare", {"source": WITH_PASSWORD})
    with pytest.raises(ParameterError, match=r"^data.source in DataParams\(.*\): must not hold a password"):
        DataParams(source=WITH_PASSWORD)


def test_a_run_with_a_password_never_starts(tmp_path):
    db = f"sqlite:///{tmp_path}/tracking.db"
    result = workbench("run", f"--set=store={tmp_path}/store", f"--set=db={db}", f"--set=data.source={WITH_PASSWORD}")
    assert result.code == 2 and result.stderr.startswith("error: data.source in --set data.source=")
    assert "must not hold a password" in result.stderr and SECRET not in result.stderr + result.stdout
    assert not (tmp_path / "store").exists() and not (tmp_path / "tracking.db").exists()


def test_urls_are_masked_wherever_parameters_are_written(tmp_path):
    """The params table, `runs show` and the report never show a password, even one recorded by an
    older workbench that did not refuse it."""
    db = f"sqlite:///{tmp_path}/tracking.db"
    tracker = Tracker(db)
    source = {"url": WITH_PASSWORD, "query": "SELECT 1"}
    run_id = tracker.create_run(
        str(tmp_path / "store"), {"data.source": source}, {"data.source": f"--set data.source={WITH_PASSWORD}"}
    )
    with tracker.engine.begin() as conn:  # as an older workbench recorded it
        conn.execute(
            insert(params).values(run_id=run_id, key="score.source", value=json.dumps(WITH_PASSWORD), origin="")
        )
        rows = conn.execute(params.select().where(params.c.run_id == run_id)).mappings().all()
    written = {row["key"]: row for row in rows}
    assert json.loads(written["data.source"]["value"])["url"] == "postgresql+psycopg://etl:***@warehouse:5432/sales"
    assert SECRET not in written["data.source"]["origin"]

    shown = tracker.get_run(run_id)["parameters"]
    assert shown["score.source"] == "postgresql+psycopg://etl:***@warehouse:5432/sales"
    cli = workbench("runs", "show", run_id, "--json", f"--set=db={db}")
    assert cli.code == 0 and SECRET not in cli.stdout and "etl:***@warehouse" in cli.stdout

    store = open_store(str(tmp_path / "store"))
    render_report(run_id, tracker, store)
    page = (tmp_path / "store" / "runs" / run_id / "report" / "index.html").read_text()
    assert SECRET not in page and "etl:***@warehouse" in page
