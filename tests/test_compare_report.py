"""Two real runs that differ in train.lr, compared in the terminal and as a page opened in a real browser."""

from __future__ import annotations

import pytest
from support.browser import CHROMIUM, CHROMIUM_ARGS
from support.cli import FEW, Place, run_id_of, workbench

pytestmark = pytest.mark.e2e

HOSTILE = '<img src="x" onerror="window.__xss = 1">'


def test_two_runs_differing_in_lr_compare_in_the_terminal_and_in_a_browser(tmp_path):
    place = Place(tmp_path / "store", f"sqlite:///{tmp_path}/tracking.db")
    ids = []
    for lr, name, team in (("0.01", HOSTILE, "vision"), ("0.002", "baseline", "speech")):
        result = workbench(
            "run",
            "--steps",
            "prepare,train",
            "--name",
            name,
            "--tag",
            f"team={team}",
            *place.sets(*FEW, f"train.lr={lr}"),
        )
        assert result.code == 0, result.stderr
        ids.append(run_id_of(result.stdout))

    listed = workbench("runs", "--columns", "train.lr,val_accuracy", "--where", "train.lr>0.005", *place.sets())
    rows = listed.stdout.splitlines()[1:]
    assert listed.code == 0 and [r.split()[0] for r in rows] == [ids[0]] and "team=vision" in rows[0]
    assert workbench("runs", "--tag", "team=speech", *place.sets()).stdout.splitlines()[1].startswith(ids[1])

    page_path = tmp_path / "compare.html"
    compared = workbench("runs", "compare", *ids, "--html", str(page_path), *place.sets())
    assert compared.code == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert next(line for line in lines if line.startswith("train.lr")).split() == ["train.lr", "0.01", "0.002"]
    for metric in ("val_accuracy", "val_loss"):  # the better run is marked, the other not
        cells = next(line for line in lines if line.startswith(metric + " ")).split()[1:]
        assert len(cells) == 2 and sum(cell.endswith("*") for cell in cells) == 1
    prepare = next(line for line in lines if line.startswith("prepare"))
    assert f"reused {ids[0]}" in prepare  # the second run took the first one's prepared data
    assert lines[-1] == f"page {page_path}"

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing (apt-get install -y chromium; make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.on("request", lambda r: not r.url.startswith(("file:", "data:")) and problems.append(f"fetched: {r.url}"))
        page.goto(page_path.as_uri())
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        assert problems == []  # self-contained: nothing fetched, nothing broken
        assert page.evaluate("window.__xss") is None
        assert HOSTILE in page.locator("#runs").inner_text()  # the name shows as the text it is
        differing = page.locator("#parameters tr").all_inner_texts()
        assert any(row.split() == ["train.lr", "0.01", "0.002"] for row in differing)
        assert page.locator("#metrics td.best").count() >= 2  # val_accuracy, val_loss at least
        charts = page.locator("#curves figure.chart")
        assert charts.count() >= 3  # loss, val_loss, val_accuracy per epoch
        for chart in charts.all():  # one line per run, drawn
            assert chart.locator("g[id^='curve-']").count() == 2
        figures = page.locator("section.figures img")
        assert figures.count() == 2  # the validation confusion matrix of each run, side by side
        assert page.evaluate("[...document.images].filter(i => i.naturalWidth === 0).length") == 0
        browser.close()
