"""The report page in a real browser: Debian's Chromium (``make install`` installs it
with apt-get when missing), driven headless by Playwright. No console error, no request
leaves the page, one histogram per tensor, the flags, sorting and filtering, a phone's
width, the page without JavaScript; a screenshot is saved for a person to look at
(``.screenshots/`` at the repository's root, not committed)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import ROOT, SAMPLES, run

SHOTS = ROOT / ".screenshots"
# The flags that keep a headless Chromium off the network (it would otherwise try to
# reach Google's services at start) and working as root in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: make install installs it (apt-get install chromium)"
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of a model with NaN/Inf and a dead (all-zero) kernel, against the
    model it came from."""
    tmp = tmp_path_factory.mktemp("page")
    bad = tmp / "bad.h5"
    shutil.copy(SAMPLES / "mlp_nan.h5", bad)
    with h5py.File(bad, "r+") as f:
        names: list[str] = []
        f.visit(lambda n: names.append(n) if n.endswith("dense_1/kernel") else None)
        f[names[0]][...] = 0.0
    page = tmp / "report.html"
    res = run("report", bad, "--against", SAMPLES / "mlp_nan.h5", "-o", page)
    assert res.code == 0, res.err
    return page


def _open(browser: Any, page_file: Path, **context: Any) -> tuple[Any, list[str], list[str]]:
    ctx = browser.new_context(**context)
    pg = ctx.new_page()
    requests: list[str] = []
    errors: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(page_file.as_uri())
    pg.wait_for_load_state("load")
    return pg, requests, errors


def _column(pg: Any, header: str) -> list[float]:
    return pg.evaluate(
        """(h) => { const ths=[...document.querySelectorAll('#tensors thead th')];
        const i=ths.findIndex(t=>t.textContent.trim()===h);
        return [...document.querySelectorAll('#tensors tbody tr')].map(
          r=>parseFloat(r.cells[i].getAttribute('data-v'))) }""",
        header,
    )


def test_the_page_in_chromium(browser: Any, page_file: Path) -> None:
    pg, requests, errors = _open(browser, page_file, viewport={"width": 1280, "height": 900})
    assert requests == [page_file.as_uri()], requests  # nothing else was fetched
    assert errors == []
    rows = pg.locator("#tensors tbody tr")
    assert rows.count() == 6
    assert pg.locator("#tensors svg.hist").count() == rows.count()  # one per tensor
    assert pg.locator('#flags li[data-flag="nan"]').count() == 1
    assert pg.locator('#flags li[data-flag="inf"]').count() == 1
    assert pg.locator('#flags li[data-flag="dead"]').count() == 1
    assert "dense_1/kernel" in pg.locator('#flags li[data-flag="dead"]').inner_text()
    assert pg.locator("#change svg.change rect").count() == 6
    assert pg.locator("#change .overlays svg.hist").count() == 1  # dense_1/kernel changed

    original = _column(pg, "Params")
    pg.locator("#tensors thead th", has_text="Params").click()
    assert _column(pg, "Params") == sorted(original)
    pg.locator("#tensors thead th", has_text="Params").click()
    assert _column(pg, "Params") == sorted(original, reverse=True)

    pg.fill("#filter", "bias")
    visible = [r for r in rows.all() if r.is_visible()]
    assert len(visible) == 3 and all("bias" in r.get_attribute("data-name") for r in visible)
    assert pg.locator("#shown").inner_text() == "3"
    pg.fill("#filter", "")
    assert errors == []
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    assert (SHOTS / "report.png").stat().st_size > 10_000


def test_a_phone_width_and_no_javascript(browser: Any, page_file: Path) -> None:
    pg, _, errors = _open(
        browser, page_file, viewport={"width": 390, "height": 844}, java_script_enabled=False
    )
    assert errors == []
    # The page fits a phone: only the tables scroll sideways, inside their boxes.
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    # Without JavaScript every row, histogram and flag is there.
    assert pg.locator("#tensors svg.hist").count() == 6
    assert pg.locator("#flags li").count() == 3
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / "report-phone.png"), full_page=True)


def test_histogram_heights_follow_the_counts(browser: Any, page_file: Path) -> None:
    """What the eye sees: each bar's drawn height is its bin's share of the tallest."""
    from weightcli.commands import report as report_cmd

    pg, _, _ = _open(browser, page_file)
    bad = page_file.parent / "bad.h5"
    rep = report_cmd.run(report_cmd.ReportRequest(), bad).figures.tensors[2]  # dense_2/kernel
    counts = rep.histogram.counts
    heights = pg.evaluate(
        """(name) => { const r=[...document.querySelectorAll('#tensors tbody tr')]
          .find(r=>r.getAttribute('data-name')===name);
        const d=r.querySelector('svg.hist path.bars').getAttribute('d');
        return [...d.matchAll(/M([0-9.]+) [0-9.]+v-([0-9.]+)/g)].map(m=>[+m[1], +m[2]]) }""",
        rep.info.name,
    )
    drawn = np.zeros(counts.size)
    for x, h in heights:
        drawn[int(x) // 2] = h
    expected = counts * 40.0 / counts.max()
    np.testing.assert_allclose(drawn[counts > 0], np.maximum(0.6, expected[counts > 0]), atol=0.06)
    assert (drawn[counts == 0] == 0).all()
