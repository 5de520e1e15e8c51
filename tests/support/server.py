"""A real `workbench serve` process on a free port of 127.0.0.1, started for a test and stopped after."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.cli import ROOT, Place

START_TIMEOUT = 60
JSON = "application/json"


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    line: str  # what it printed at start

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def post(self, path: str, body: bytes | str, content_type: str | None = JSON, **headers: str) -> httpx.Response:
        if content_type:
            headers["content-type"] = content_type
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, by name and labels."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples


def _start(place: Place, log: Path, *settings: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", *place.sets("serve.port=0", *settings)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),  # the child writes to it for as long as it runs
        text=True,
    )


@contextmanager
def serving(place: Place, log: Path, *settings: str) -> Iterator[Server]:
    """`workbench serve` on a free port, ready (``/ping`` answers 200) when yielded; SIGTERM after."""
    proc = _start(place, log, *settings)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r" on (http://\S+?)(;|$)", line.strip())
        assert found, f"no 'serving ... on URL' line; stdout {line!r}, log:\n{log.read_text()[-3000:]}"
        server = Server(found.group(1), proc, log, line)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(server.url + "/ping", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping in time"
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
