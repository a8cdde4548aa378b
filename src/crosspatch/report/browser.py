"""Headless Chromium for checking and picturing reports (tests and the README screenshot).

    python -m crosspatch.report.browser runs/demo/report.html docs/demo-report.png

Uses the system's ``chromium`` (Debian's package) in headless mode: no driver, no download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    env = os.environ.get("CROSSPATCH_CHROMIUM")
    if env and Path(env).exists():
        return env
    return next((shutil.which(c) for c in CANDIDATES if shutil.which(c)), None)


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]
        return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def load(html: str | Path, fragment: str = "") -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the page's console errors."""
    url = Path(html).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    proc = _run(["--dump-dom", url])
    errors = [line for line in proc.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "Error" in line or ":ERROR:" in line)]
    return proc.stdout, errors


def screenshot(html: str | Path, png: str | Path, width: int = 1200, height: int = 1800) -> Path:
    """A PNG of the page as Chromium renders it."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={png}", f"--window-size={width},{height}", "--hide-scrollbars",
          Path(html).resolve().as_uri()])
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m crosspatch.report.browser REPORT.html OUT.png", file=sys.stderr)
        sys.exit(2)
    print(screenshot(sys.argv[1], sys.argv[2]))
