"""workbench ui: the runs table, a run, runs compared, their files and the JSON API, over HTTP and
in a real browser (Debian's chromium driven by Playwright).

Runs are recorded through the tracker as a pipeline records them (parameters, per-epoch and final
metrics, steps, artifacts written to a real store), so every page reads a real tracking database.
"""

from __future__ import annotations

import html
import http.client
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from support.browser import CHROMIUM, CHROMIUM_ARGS
from support.cli import ROOT, workbench
from support.localpg import free_port

from workbench.storage import open_store
from workbench.tracking.tracker import Tracker
from workbench.ui.app import create_app

HOSTILE = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'


# ---- recorded runs -------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One run to record: what a pipeline run writes to the tracking DB and its store."""

    name: str
    params: dict[str, Any]
    final: dict[str, float]
    epochs: int = 6
    status: str = "finished"
    tags: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # step/file -> bytes, recorded as artifacts


def png() -> bytes:
    import io

    import numpy as np
    from matplotlib import image

    buf = io.BytesIO()
    image.imsave(buf, np.linspace(0, 1, 64).reshape(8, 8), format="png")
    return buf.getvalue()


def record(tracker: Tracker, store_uri: str, spec: Spec) -> str:
    store = open_store(store_uri)
    run_id = tracker.create_run(store.root, spec.params, {}, name=spec.name, tags=spec.tags)
    tracker.plan_steps(run_id, ["prepare", "train"])
    tracker.finish_step(run_id, "prepare", "finished", 1.5)
    best = spec.final.get("val_accuracy", 0.5)
    for epoch in range(spec.epochs):  # curves that end at the final values
        left = spec.epochs - 1 - epoch
        tracker.log_metrics(
            run_id,
            "train",
            {"val_accuracy": best - 0.04 * left, "val_loss": spec.final.get("val_loss", 1.0) + 0.1 * left},
            epoch=epoch,
        )
    tracker.log_metrics(run_id, "train", spec.final)
    for path, data in spec.files.items():
        step = path.split("/")[0]
        tracker.log_artifact(run_id, step, store.write_bytes(f"runs/{run_id}/{path}", data))
    tracker.finish_step(run_id, "train", spec.status, 12.0, error="train diverged" if spec.status == "failed" else None)
    tracker.finish_run(run_id, spec.status)
    return run_id


SPECS = [
    Spec(
        "lr-0.1",
        {"train.lr": 0.1, "train.model": "mlp", "train.width": 64, "seed": 0},
        {"val_accuracy": 0.91, "val_loss": 0.30},
        tags={"team": "vision"},
        files={"train/model.pth": b"weights" * 1000, "train/fit.png": b""},
    ),
    Spec(
        "lr-0.01",
        {"train.lr": 0.01, "train.model": "mlp", "train.width": 128, "seed": 0},
        {"val_accuracy": 0.95, "val_loss": 0.20},
        tags={"team": "vision"},
        files={"train/fit.png": b""},
    ),
    Spec(
        "lr-0.001",
        {"train.lr": 0.001, "train.model": "cnn", "train.width": 128, "seed": 0},
        {"val_accuracy": 0.97, "val_loss": 0.12},
        tags={"team": "tabular"},
        files={
            "validate/per_class.csv": b"class,precision,recall,f1,support\ncat,0.9,0.95,0.9243243243,20\ndog,0.96,0.91,0.934,22\n",
            "validate/confusion.csv": b"class,cat,dog\ncat,19,1\ndog,2,20\n",
        },
    ),
    Spec(
        HOSTILE,
        {"train.lr": 0.0005, "train.model": HOSTILE, "train.width": 32, "seed": 0},
        {"val_accuracy": 0.50, "val_loss": 2.0, "<b>bold</b>_accuracy": 0.5},
        status="failed",
        tags={"<i>k</i>": HOSTILE},
        files={"validate/per_class.csv": f"class,precision\n{HOSTILE},0.5\n".encode()},
    ),
]


@dataclass
class Recorded:
    tracker: Tracker
    store: str
    ids: dict[str, str]  # run name -> id

    def client(self) -> TestClient:
        return TestClient(create_app(self.tracker))


def recorded(db: str, store: str) -> Recorded:
    tracker = Tracker(db)
    figure = png()
    ids = {}
    for spec in SPECS:
        files = {k: (figure if k.endswith(".png") else v) for k, v in spec.files.items()}
        ids[spec.name] = record(tracker, store, Spec(**{**spec.__dict__, "files": files}))
    # the second run took its prepare step from the first; the first has a report, and so has the
    # hostile run, one that holds its name as markup
    tracker.record_reuse(ids["lr-0.01"], "prepare", ids["lr-0.1"], [], None, 0.2)
    for name, body in (("lr-0.1", "<img src='../train/fit.png' alt='fit'>"), (HOSTILE, HOSTILE)):
        report = f"<html><body><h1>report of {name if name != HOSTILE else 'it'}</h1>{body}</body></html>"
        open_store(store).write_bytes(f"runs/{ids[name]}/report/index.html", report.encode())
    return Recorded(tracker, store, ids)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The recorded runs, shared by the tests that only read them."""
    tmp = tmp_path_factory.mktemp("ui")
    return recorded(f"sqlite:///{tmp}/tracking.db", str(tmp / "store"))


@pytest.fixture
def own_runs(tmp_path: Path) -> Recorded:
    """The same runs for a test that adds to them or to their store."""
    return recorded(f"sqlite:///{tmp_path}/tracking.db", str(tmp_path / "store"))


def names(page: str) -> list[str]:
    """The names in the runs table, top to bottom, as the page shows them."""
    return [html.unescape(n) for n in re.findall(r'<td class="name">(.*?)</td>', page)]


def api_names(client: TestClient, **query: Any) -> list[str]:
    answer = client.get("/api/runs", params=query)
    assert answer.status_code == 200, answer.text
    return [row["name"] for row in answer.json()["runs"]]


# ---- the runs table ------------------------------------------------------------------------------------


def test_runs_table_lists_newest_first_with_the_usual_scores(runs):
    page = runs.client().get("/")
    assert page.status_code == 200
    assert names(page.text) == [HOSTILE, "lr-0.001", "lr-0.01", "lr-0.1"]
    assert '<th class="num" data-column="val_accuracy">' in page.text
    assert "4 runs" in page.text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"where": "train.width>100"}, ["lr-0.001", "lr-0.01"]),  # as numbers: text would put "64" above "100"
        ({"where": "train.lr>=0.01"}, ["lr-0.01", "lr-0.1"]),
        ({"where": ["train.model=mlp", "val_accuracy>0.93"]}, ["lr-0.01"]),
        ({"where": "train.model!=mlp", "sort": "train.lr"}, [HOSTILE, "lr-0.001"]),
        ({"status": "failed"}, [HOSTILE]),
        ({"tag": "team=vision"}, ["lr-0.01", "lr-0.1"]),
        ({"q": "LR-0.0"}, ["lr-0.001", "lr-0.01"]),
        ({"sort": "-val_accuracy"}, ["lr-0.001", "lr-0.01", "lr-0.1", HOSTILE]),
        ({"sort": "val_loss"}, ["lr-0.001", "lr-0.01", "lr-0.1", HOSTILE]),
        ({"sort": "-train.width"}, ["lr-0.001", "lr-0.01", "lr-0.1", HOSTILE]),  # a tie: the newer first
    ],
    ids=[
        "param>number",
        "param>=",
        "two conditions",
        "param!= sorted",
        "status",
        "tag",
        "name",
        "metric desc",
        "metric asc",
        "param desc",
    ],
)
def test_filters_and_sorting_are_the_same_on_the_page_and_the_api(runs, query, expected):
    client = runs.client()
    page = client.get("/", params=query)
    assert page.status_code == 200, page.text
    assert names(page.text) == expected
    assert api_names(client, **query) == expected


def test_pages_cut_in_the_database_and_link_to_each_other(runs):
    client = runs.client()
    first = client.get("/", params={"sort": "-val_accuracy", "limit": 3})
    assert names(first.text) == ["lr-0.001", "lr-0.01", "lr-0.1"]
    assert "1–3 of 4 runs" in first.text and 'id="prev"' not in first.text
    following = re.search(r'<a href="([^"]+)" id="next">', first.text).group(1)
    second = client.get(following.replace("&amp;", "&"))
    assert names(second.text) == [HOSTILE] and "4–4 of 4 runs" in second.text and 'id="next"' not in second.text
    answer = client.get("/api/runs", params={"sort": "-val_accuracy", "limit": 3, "offset": 3}).json()
    assert answer["total"] == 4 and [r["name"] for r in answer["runs"]] == [HOSTILE]


def test_chosen_columns_show_parameters_and_metrics(runs):
    client = runs.client()
    page = client.get("/", params={"columns": "train.lr,train.model,val_loss", "where": "train.model=cnn"})
    row = re.search(r'<tr data-run="[^"]+">(.*?)</tr>', page.text, re.DOTALL).group(1)
    cells = re.findall(r'<td class="num" data-column="([^"]+)">(.*?)</td>', row)
    assert cells == [("train.lr", "0.001"), ("train.model", "cnn"), ("val_loss", "0.12")]
    answer = client.get("/api/runs", params={"columns": "train.lr,val_loss", "where": "train.model=cnn"}).json()
    assert answer["runs"][0]["values"] == {"train.lr": 0.001, "val_loss": 0.12}


def test_sort_links_flip_the_order(runs):
    client = runs.client()
    page = client.get("/", params={"columns": "val_accuracy"})
    link = re.search(r'<a href="([^"]+)" class="">val_accuracy', page.text).group(1).replace("&amp;", "&")
    assert "sort=-val_accuracy" in link
    descending = client.get(link)
    assert names(descending.text)[0] == "lr-0.001"
    flipped = re.search(r'<a href="([^"]+)" class="sorted">val_accuracy', descending.text).group(1)
    assert names(client.get(flipped.replace("&amp;", "&")).text)[0] == HOSTILE


@pytest.mark.parametrize(
    ("query", "line"),
    [
        ({"where": "train.lr>>1"}, "condition 'train.lr>>1'"),
        ({"where": "val_accuracy>high"}, "condition 'val_accuracy>high'"),
        ({"tag": "team"}, "tag 'team': expected KEY=VALUE"),
        ({"limit": "many"}, "limit 'many': expected a whole number"),
        ({"limit": "0"}, "limit 0: must be between 1 and 500"),
    ],
)
def test_a_mistyped_filter_is_one_line_on_the_page_and_in_the_api(runs, query, line):
    client = runs.client()
    page = client.get("/", params=query)
    assert page.status_code == 400 and 'id="problem"' in page.text and names(page.text) == []
    assert line in html.unescape(re.search(r'<p class="problem" id="problem">(.*?)</p>', page.text).group(1))
    answer = client.get("/api/runs", params=query)
    assert answer.status_code == 400 and answer.json()["error"].startswith(line)


# ---- one run -------------------------------------------------------------------------------------------


def test_run_page_shows_steps_metrics_curves_parameters_and_artifacts(runs):
    run_id = runs.ids["lr-0.1"]
    page = runs.client().get(f"/runs/{run_id}")
    assert page.status_code == 200
    text = page.text
    assert "lr-0.1" in text and "team=vision" in text
    assert text.count('<polyline class="curve"') == 2  # val_accuracy and val_loss by epoch
    assert f'href="/runs/{run_id}/files/train/model.pth"' in text
    assert f'<img src="/runs/{run_id}/files/train/fit.png"' in text
    assert re.search(r"<td class=\"mono\">train\.width</td><td class=\"mono\">64</td>", text)


def test_run_page_shows_its_report_sandboxed_and_the_run_a_step_was_reused_from(runs):
    first, second = runs.ids["lr-0.1"], runs.ids["lr-0.01"]
    client = runs.client()
    page = client.get(f"/runs/{first}").text
    link = f"/runs/{first}/files/report/index.html"
    assert f'<iframe class="report" src="{link}" sandbox' in page and f'href="{link}" id="report-link"' in page
    report = client.get(link)
    assert report.headers["content-type"] == "text/html; charset=utf-8"
    assert report.headers["content-security-policy"] == "sandbox" and "report of lr-0.1" in report.text
    assert client.get(f"/runs/{first}/files/train/fit.png").status_code == 200  # the report's relative figure
    reused = re.search(r"<tr><td>prepare</td>(.*?)</tr>", client.get(f"/runs/{second}").text, re.DOTALL).group(1)
    assert f'<a href="/runs/{first}">{first}</a>' in reused
    assert "report-link" not in client.get(f"/runs/{second}").text  # no report written: no link
    compared = client.get(f"/compare?runs={first},{second}").text
    steps = re.search(r'<table id="steps">(.*?)</table>', compared, re.DOTALL).group(1)
    assert f'reused from <a class="mono" href="/runs/{first}">{first}</a>' in steps


def test_pages_allow_no_script(runs):
    for path in ("/", f"/runs/{runs.ids['lr-0.1']}", f"/compare?runs={runs.ids['lr-0.1']},{runs.ids['lr-0.01']}"):
        policy = runs.client().get(path).headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy, path


def test_run_page_shows_the_test_splits_per_class_table_and_confusion_matrix(runs):
    text = runs.client().get(f"/runs/{runs.ids['lr-0.001']}").text
    per_class = re.search(r'<table class="csv" id="per_class">(.*?)</table>', text, re.DOTALL).group(1)
    assert re.findall(r"<th>(.*?)</th>", per_class) == ["class", "precision", "recall", "f1", "support", "cat", "dog"]
    assert '<td class="num">0.924324</td><td class="num">20</td>' in per_class
    confusion = re.search(r'<table class="csv" id="confusion">(.*?)</table>', text, re.DOTALL).group(1)
    assert '<th>dog</th><td class="num">2</td><td class="num">20</td>' in confusion


def test_api_run_is_the_runs_record_as_json(runs):
    run_id = runs.ids["lr-0.01"]
    answer = runs.client().get(f"/api/runs/{run_id}").json()
    assert answer["name"] == "lr-0.01" and answer["tags"] == {"team": "vision"}
    assert answer["parameters"]["train.lr"] == 0.01 and answer["metrics"]["val_accuracy"] == 0.95
    assert answer["history"]["val_loss"][0] == {"epoch": 0, "value": pytest.approx(0.7)}
    assert [a["key"] for a in answer["artifacts"]] == [f"runs/{run_id}/train/fit.png"]
    missing = runs.client().get("/api/runs/nope")
    assert missing.status_code == 404 and missing.json()["error"].startswith("no run 'nope'")
    assert runs.client().get("/runs/nope").status_code == 404


def test_a_run_named_by_its_alias(own_runs):
    from sqlalchemy import insert

    from workbench.tracking.tables import aliases
    from workbench.tracking.tracker import now

    run_id = own_runs.ids["lr-0.001"]
    with own_runs.tracker.engine.begin() as conn:  # the page only reads what `models alias set` wrote
        conn.execute(insert(aliases).values(name="champion", run_id=run_id, moved_at=now()))
    assert own_runs.client().get("/api/runs/@champion").json()["id"] == run_id
    page = own_runs.client().get("/runs/@champion")
    assert page.status_code == 200 and run_id in page.text
    unknown = own_runs.client().get("/api/runs/@nope")
    assert unknown.status_code == 404 and unknown.json()["error"].endswith("aliases: @champion")


# ---- files: only the run's own, from its own store -------------------------------------------------------


def test_files_stream_from_the_runs_store(runs):
    run_id = runs.ids["lr-0.1"]
    answer = runs.client().get(f"/runs/{run_id}/files/train/model.pth")
    assert answer.status_code == 200 and answer.content == b"weights" * 1000
    assert answer.headers["content-disposition"].startswith("attachment")
    assert answer.headers["content-security-policy"] == "sandbox"
    figure = runs.client().get(f"/runs/{run_id}/files/train/fit.png")
    assert figure.headers["content-type"] == "image/png" and figure.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "path",
    [
        "%2E%2E/%2E%2E/tracking.db",  # dots encoded: the server decodes them to ..
        "train%2F..%2F..%2F..%2Ftracking.db",  # slashes encoded
        "%2Fetc%2Fpasswd",  # an absolute key
        "/etc/passwd",
        "train/%2E/model.pth",
        "train\\..\\..\\..\\tracking.db",
        "train/model.pth%00.png",
    ],
)
def test_a_path_that_leaves_the_runs_folder_is_refused(runs, path):
    run_id = runs.ids["lr-0.1"]
    answer = runs.client().get(f"/runs/{run_id}/files/{path}")
    assert answer.status_code == 404
    assert b"SQLite" not in answer.content and b"root:" not in answer.content


def test_a_file_is_served_only_from_its_runs_recorded_store(own_runs, tmp_path):
    """Another run's folder in another store, or a link out of the store, is no file of this run."""
    run_id = own_runs.ids["lr-0.01"]
    elsewhere = open_store(str(tmp_path / "other"))
    elsewhere.write_bytes(f"runs/{run_id}/train/secret.txt", b"not this run's store")
    assert own_runs.client().get(f"/runs/{run_id}/files/train/secret.txt").status_code == 404
    link = Path(own_runs.store) / "runs" / run_id / "train" / "outside.txt"
    (tmp_path / "outside.txt").write_text("outside the store")
    link.symlink_to(tmp_path / "outside.txt")
    assert own_runs.client().get(f"/runs/{run_id}/files/train/outside.txt").status_code == 404


@pytest.mark.parametrize("raw", ["../../tracking.db", "../../../../../../etc/passwd", "train/../../../tracking.db"])
def test_raw_dot_segments_are_refused_by_the_live_server(live, raw):
    """Browsers and httpx remove ``..`` before sending; a hand-made request keeps them."""
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    conn.request("GET", f"/runs/{live.runs.ids['lr-0.1']}/files/{raw}")
    answer = conn.getresponse()
    body = answer.read()
    assert answer.status in (404,) and b"root:" not in body and b"SQLite" not in body


# ---- runs compared -------------------------------------------------------------------------------------


def test_compare_shows_the_parameter_diff_best_metrics_curves_and_parallel_coordinates(runs):
    ids = [runs.ids[n] for n in ("lr-0.1", "lr-0.01", "lr-0.001")]
    page = runs.client().get(f"/compare?runs={','.join(ids)}")
    assert page.status_code == 200
    text = page.text
    params = re.search(r'<table id="params">(.*?)</table>', text, re.DOTALL).group(1)
    assert "train.lr" in params and "train.width" in params and "seed" not in params  # seed is the same
    best = re.findall(r'<td class="num best">(.*?)</td>', text)
    assert best == ["0.97", "0.12"]  # highest accuracy, lowest loss: both the third run's
    curves = re.findall(r'<svg class="chart line-chart" data-metric="([^"]+)"(.*?)</svg>', text, re.DOTALL)
    assert [m for m, _ in curves] == ["val_accuracy", "val_loss"]
    for _, svg in curves:
        assert sorted(re.findall(r'data-run="([^"]+)" points="[^"]+"', svg)) == sorted(ids)
    parallel = re.search(r'<svg class="chart parallel"(.*?)</svg>', text, re.DOTALL).group(1)
    axes = re.findall(r'class="axis-line" data-key="([^"]+)"', parallel)
    assert axes == ["train.lr", "train.model", "train.width", "val_accuracy"]
    assert len(re.findall(r'class="run-line"', parallel)) == 3
    assert text.count('<img src="/runs/') == 2  # the two runs that recorded a validation figure


def test_compare_takes_chosen_axes_a_metric_and_every_parameter(runs):
    ids = [runs.ids[n] for n in ("lr-0.1", "lr-0.01")]
    client = runs.client()
    page = client.get("/compare", params={"runs": ids, "axes": "train.width,seed", "metric": "val_loss", "all": "1"})
    parallel = re.search(r'<svg class="chart parallel"(.*?)</svg>', page.text, re.DOTALL).group(1)
    assert re.findall(r'class="axis-line" data-key="([^"]+)"', parallel) == ["train.width", "seed", "val_loss"]
    params = re.search(r'<table id="params">(.*?)</table>', page.text, re.DOTALL).group(1)
    assert "seed" in params  # all=1 shows the parameters that agree too


def test_compare_needs_two_known_runs(runs):
    client = runs.client()
    one = client.get(f"/compare?runs={runs.ids['lr-0.1']}")  # the run page's link: the form keeps the id
    assert "add the ids of runs to compare with it" in one.text
    assert f'name="runs" value="{runs.ids["lr-0.1"]}"' in one.text
    unknown = client.get(f"/compare?runs={runs.ids['lr-0.1']},nope")
    assert unknown.status_code == 404 and "no run &#39;nope&#39;" in unknown.text
    assert client.get("/compare").status_code == 200


# ---- nothing a user wrote runs as markup -----------------------------------------------------------------


def test_names_tags_keys_and_values_are_escaped_everywhere(runs):
    hostile = runs.ids[HOSTILE]
    client = runs.client()
    pages = {
        "runs": client.get("/", params={"columns": "train.model,<b>bold</b>_accuracy"}).text,
        "run": client.get(f"/runs/{hostile}").text,
        "compare": client.get(f"/compare?runs={hostile},{runs.ids['lr-0.1']}&metric=<b>bold</b>_accuracy").text,
        "filter": client.get("/", params={"where": f"train.model={HOSTILE}"}).text,
    }
    for where, text in pages.items():
        assert "<script>" not in text and '<img src="x"' not in text and "<b>bold" not in text, where
        assert "&lt;script&gt;" in text, where
    assert names(pages["filter"]) == [HOSTILE]  # found by its name's exact text


def test_passwords_in_urls_are_masked(own_runs):
    """A run's error can quote a database URL with its password (parameters are masked when recorded)."""
    failed = record(own_runs.tracker, own_runs.store, Spec("unreachable", {"train.lr": 0.5}, {}, status="failed"))
    own_runs.tracker.finish_run(failed, "failed", error="cannot reach postgresql://analyst:hunter2@db/sales")
    client = own_runs.client()
    for path in (f"/runs/{failed}", f"/api/runs/{failed}"):
        text = client.get(path).text
        assert "hunter2" not in text and "analyst:***@db" in text, path


def test_the_app_only_reads(runs):
    client = runs.client()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.request(method, "/").status_code == 405
        assert client.request(method, f"/api/runs/{runs.ids['lr-0.1']}").status_code == 405


# ---- S3 and PostgreSQL -----------------------------------------------------------------------------------


def test_downloads_stream_from_s3(s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="ui-runs")
    tracker = Tracker(f"sqlite:///{tmp_path}/tracking.db")
    big = bytes(range(256)) * (3 * 4096 + 7)  # 3 MB and a bit: several chunks
    run_id = record(
        tracker, "s3://ui-runs/team", Spec("on s3", {"train.lr": 0.1}, {}, files={"export/model.onnx": big})
    )
    client = TestClient(create_app(tracker))
    answer = client.get(f"/runs/{run_id}/files/export/model.onnx")
    assert answer.status_code == 200 and answer.content == big
    assert client.get(f"/runs/{run_id}/files/export/missing.onnx").status_code == 404
    page = client.get(f"/runs/{run_id}").text
    assert "s3://ui-runs/team" in page and f"/runs/{run_id}/files/export/model.onnx" in page


def test_people_on_one_postgresql_database_see_the_same(postgres, tmp_path):
    url = postgres()
    runs = recorded(url, str(tmp_path / "store"))
    # a second reader with a password in its URL (trust authentication ignores it): never shown
    host = url.replace("postgres@", "postgres:hunter2@")
    mine, theirs = runs.client(), TestClient(create_app(Tracker(host, create=False)))
    query = {"where": "train.width>100", "sort": "-val_accuracy", "columns": "train.lr,val_accuracy"}
    assert api_names(mine, **query) == api_names(theirs, **query) == ["lr-0.001", "lr-0.01"]
    page = theirs.get("/", params=query).text
    assert names(page) == ["lr-0.001", "lr-0.01"] and "hunter2" not in page and "postgres:***@" in page
    ids = ",".join(runs.ids[n] for n in ("lr-0.1", "lr-0.001"))
    assert theirs.get(f"/compare?runs={ids}").text.count('<polyline class="curve"') == 4


def test_a_database_gone_away_is_one_line_503(postgres, tmp_path):
    from sqlalchemy import create_engine, text

    url = postgres()
    tracker = Tracker(url)
    record(tracker, str(tmp_path / "store"), Spec("only", {"train.lr": 0.1}, {"val_accuracy": 0.9}))
    client = TestClient(create_app(tracker))
    assert client.get("/api/runs").json()["total"] == 1
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    admin.dispose()
    for path in ("/", "/compare?runs=a,b", "/api/runs"):
        answer = client.get(path)
        line = answer.json()["error"] if path.startswith("/api/") else answer.text.removesuffix("\n")
        assert answer.status_code == 503 and "\n" not in line, path
        assert line.startswith(f"db '{url}' failed to answer (") and line.endswith("try again in a moment")


# ---- the command -----------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_workbench_ui_serves_until_stopped(runs):
    db = runs.tracker.url
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "ui", "--set", f"db={db}", "--set", "ui.port=0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        found = re.match(r"runs of (\S+) on http://127\.0\.0\.1:(\d+)$", line.strip())
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        conn = http.client.HTTPConnection("127.0.0.1", int(found.group(2)), timeout=10)
        conn.request("GET", "/api/runs?where=train.model%3Dcnn")
        answer = conn.getresponse()
        assert answer.status == 200 and b"lr-0.001" in answer.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0


@pytest.mark.e2e
def test_workbench_ui_refuses_a_port_in_use_and_a_missing_db(runs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = workbench("ui", "--set", f"db={runs.tracker.url}", "--set", f"ui.port={port}")
    assert busy.code == 2
    assert busy.stderr.strip() == (
        f"error: ui.port {port} on 127.0.0.1 is in use by another program; stop it or choose another ui.port"
    )
    missing = workbench("ui", "--set", f"db=sqlite:///{tmp_path}/nowhere.db")
    assert missing.code == 1 and missing.stderr.count("\n") == 1 and "no tracking database at" in missing.stderr
    assert not (tmp_path / "nowhere.db").exists()


# ---- in a real browser -----------------------------------------------------------------------------------


@dataclass
class Live:
    runs: Recorded
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def live(runs: Recorded) -> Iterator[Live]:
    """The app on a real uvicorn server in this process, on a free port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runs.tracker), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    yield Live(runs, port)
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Browser:
    """A headless chromium page and what went wrong while it loaded pages (console errors, failed
    requests, error answers, dialogs)."""

    page: Any
    problems: list[str]


@pytest.fixture
def browser(live: Live) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing (apt-get install -y chromium; make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
        page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
        yield Browser(page, problems)
        chromium.close()


def _shown_names(page) -> list[str]:
    return page.locator("#runs tbody td.name").all_inner_texts()


def _broken_images(page) -> int:
    return page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth === 0).length")


@pytest.mark.e2e
def test_browser_runs_table_sorts_and_filters(browser, live):
    page = browser.page
    page.goto(live.url + "/")
    assert _shown_names(page) == [HOSTILE, "lr-0.001", "lr-0.01", "lr-0.1"]
    page.get_by_role("link", name="val_accuracy").click()  # descending first for a score
    page.wait_for_url("**sort=-val_accuracy**")
    assert _shown_names(page) == ["lr-0.001", "lr-0.01", "lr-0.1", HOSTILE]
    page.get_by_role("link", name=re.compile(r"val_accuracy")).click()
    page.wait_for_url(re.compile(r"sort=val_accuracy"))
    assert _shown_names(page)[0] == HOSTILE
    page.locator('input[name="where"]').last.fill("train.width>100")
    page.locator('input[name="tag"]').last.fill("team=vision")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"where=train.width"))
    assert _shown_names(page) == ["lr-0.01"]
    assert page.locator("#count").inner_text() == "1–1 of 1 runs"
    assert browser.problems == []


@pytest.mark.e2e
def test_browser_hostile_run_name_renders_as_text(browser, live):
    page = browser.page
    hostile = live.runs.ids[HOSTILE]
    for path in ("/", f"/compare?runs={hostile},{live.runs.ids['lr-0.1']}", f"/runs/{hostile}"):
        page.goto(live.url + path)
        assert page.evaluate("window.__xss") is None, path
        assert page.locator("script").count() == 0, path
        assert HOSTILE in page.locator("body").inner_text(), path
    # its report holds the markup as it is: it opens in a sandbox, where its script and handler do not run
    assert page.frame_locator("iframe.report").locator("h1").inner_text() == "report of it"
    assert page.frames[1].evaluate("window.__xss") is None
    blocked = [p for p in browser.problems if "Blocked script execution" in p and "sandboxed" in p]
    assert blocked and all(p in blocked or "/report/x" in p or "404 (Not Found)" in p for p in browser.problems)


@pytest.mark.e2e
def test_browser_compare_page_draws_its_curves(browser, live, tmp_path):
    page = browser.page
    names_ = ("lr-0.1", "lr-0.01", "lr-0.001")
    page.goto(live.url + "/")
    for name in names_:
        page.locator(f'tr:has(td.name:text-is("{name}")) input[type=checkbox]').check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url("**/compare?**")
    charts = page.locator("#curves svg.line-chart")
    assert charts.count() == 2
    for i in range(2):
        lines = charts.nth(i).locator("polyline.curve")
        assert lines.count() == 3
        for j in range(3):
            box = lines.nth(j).bounding_box()
            assert box and box["width"] > 100  # drawn across the epochs, not a point
    assert page.locator("#parallel polyline.run-line").count() == 3
    assert page.locator("#legend [data-run]").count() == 3
    figures = page.locator(".figures img")
    assert figures.count() == 2
    for i in range(2):  # loaded lazily: scrolled to, each decodes to a picture
        figures.nth(i).scroll_into_view_if_needed()
        assert figures.nth(i).evaluate("i => i.decode().then(() => i.naturalWidth)") > 0
    assert _broken_images(page) == 0
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert browser.problems == []


@pytest.mark.e2e
def test_browser_run_page_and_its_download(browser, live):
    page = browser.page
    run_id = live.runs.ids["lr-0.1"]
    page.goto(f"{live.url}/runs/{run_id}")
    assert page.locator("#curves polyline.curve").count() == 2
    assert _broken_images(page) == 0
    with page.expect_download() as download:
        page.get_by_role("link", name="train/model.pth").click()
    assert Path(download.value.path()).read_bytes() == b"weights" * 1000
    # a download leaves the page: chromium reports its navigation as aborted, nothing else went wrong
    assert [p for p in browser.problems if not p.startswith("failed: ") or "model.pth" not in p] == []
    assert page.frame_locator("iframe.report").locator("img").evaluate("i => i.naturalWidth") > 0
