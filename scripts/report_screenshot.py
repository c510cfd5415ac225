"""Remake docs/report.png, the README's picture of a report page: the page of
sample_models/cnn.keras pruned to 50% against the original, in Debian's Chromium.

    .venv/bin/python scripts/report_screenshot.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = ROOT / "sample_models" / "cnn.keras"
        shutil.copy(src, work / "cnn.keras")
        weightcli = [sys.executable, "-m", "weightcli"]
        subprocess.run(
            [*weightcli, "prune", "cnn.keras", "--sparsity", "0.5", "-o", "cnn_pruned.keras",
             "--note", "50% magnitude pruning", "--report-html", "report.html"],
            cwd=work, check=True, capture_output=True,
        )  # fmt: skip
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto((work / "report.html").as_uri())
            page.screenshot(path=str(ROOT / "docs" / "report.png"))
            browser.close()


if __name__ == "__main__":
    main()
