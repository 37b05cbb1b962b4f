"""Headless Chromium for the report tests and bench/report_screenshots.py: DOM and screenshots.

Debian's `chromium` package (apt-get install chromium); --no-sandbox because CI runs as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Wait for the page's load event (inline images decoded) before dumping or shooting.
VIRTUAL_TIME_MS = 10_000
TIMEOUT_S = 180  # a 400-class page on a loaded 2-core machine takes ~30 s


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _run(args: list[str]) -> str:
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:  # parallel runs never share a profile
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={VIRTUAL_TIME_MS}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "HOME": profile},
            check=True,
        )
    return done.stdout


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran (the report sets <html data-images="ok/total">)."""
    return _run(["--dump-dom", Path(page).resolve().as_uri()])


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 2000) -> Path:
    _run(
        [
            f"--screenshot={Path(out).resolve()}",
            f"--window-size={width},{height}",
            Path(page).resolve().as_uri(),
        ]
    )
    return Path(out)
