"""The server's access log (workbench/serve/access.py): off by default, Common Log Format or JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import httpx
import pytest
from support.cli import copy_run
from support.server import serving

from workbench.serve.access import AccessLog

CLF = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "(\w+) (\S+) HTTP/1\.1" (\d{3}) (\d+|-)$'
)


def test_a_line_in_common_log_format_and_in_json():
    scope = {"type": "http", "method": "POST", "path": "/invocations", "raw_path": b"/invocations",
             "query_string": b"", "client": ("10.0.0.7", 51234), "http_version": "1.1"}  # fmt: skip
    stamp = datetime(2026, 12, 5, 0, 15, 1, tzinfo=UTC)
    common = AccessLog(None, "common").line(scope, 200, 123, stamp, 0.0042)
    assert common == '10.0.0.7 - - [05/Dec/2026:00:15:01 +0000] "POST /invocations HTTP/1.1" 200 123'
    empty = AccessLog(None, "common").line({**scope, "query_string": b"a=1"}, 204, 0, stamp, 0.001)
    assert empty.endswith('"POST /invocations?a=1 HTTP/1.1" 204 -')
    line = json.loads(AccessLog(None, "json").line(scope, 400, 57, stamp, 0.0042))
    assert line == {"time": "2026-12-05T00:15:01.000+00:00", "client": "10.0.0.7", "method": "POST",
                    "path": "/invocations", "status": 400, "bytes": 57, "ms": 4.2}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["off", "common", "json"])
def test_the_server_logs_each_answer_when_asked(small_run, tmp_path, fmt):
    run = copy_run(small_run, tmp_path / "run")
    log = tmp_path / "serve.log"
    with serving(run.place, log, f"serve.model={run.run_id}", f"serve.access_log={fmt}") as server:
        assert httpx.get(server.url + "/ping", timeout=30).status_code == 200
        assert server.post("/invocations", "{not json").status_code == 400
    lines = [
        line.split("workbench.serve.access", 1)[1] for line in log.read_text().splitlines() if "serve.access" in line
    ]
    if fmt == "off":
        assert lines == []
        return
    entries = [line.split(": ", 1)[1] for line in lines][-2:]  # before them, the start's readiness checks
    if fmt == "common":
        found = [CLF.match(entry).groups() for entry in entries]
        assert [(method, path, status) for method, path, status, _ in found] == [
            ("GET", "/ping", "200"),
            ("POST", "/invocations", "400"),
        ]
    else:
        parsed = [json.loads(entry) for entry in entries]
        assert [(p["method"], p["path"], p["status"]) for p in parsed] == [
            ("GET", "/ping", 200),
            ("POST", "/invocations", 400),
        ]
        assert all(p["bytes"] > 0 and p["ms"] >= 0 for p in parsed)
