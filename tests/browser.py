"""Open a page in the system's headless Chromium (Debian's `chromium`, installed by `.ci/setup --browser`) through
Playwright, and report what a person opening it would run into: console errors, and media that does not load."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Chromium on a closed network: no background connections, no first-run UI, no GPU (see .ci/setup).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageReport:
    errors: list[str]  # console errors and uncaught exceptions
    media: list[dict]  # per <audio>/<video>: tag, src, duration (s), error code (None when it loaded)


def chromium() -> str:
    """The Chromium binary, or an AssertionError saying how to install it (a missing browser fails, never skips)."""
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    assert path, "Chromium is not installed: run `bash .ci/setup --browser` (Debian's chromium package)"
    return path


def open_page(path: Path, screenshot: Path | None = None, timeout_s: float = 30.0) -> PageReport:
    """Load `path` (an HTML file), wait until every audio/video element has its metadata or an error."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}: {r.failure}"))
            page.goto(Path(path).resolve().as_uri())
            page.wait_for_function(
                "() => [...document.querySelectorAll('audio,video')].every(m => m.readyState >= 1 || m.error)",
                timeout=timeout_s * 1000,
            )
            media = page.evaluate(
                """() => [...document.querySelectorAll('audio,video')].map(m => ({
                    tag: m.tagName.toLowerCase(), src: m.getAttribute('src'), duration: m.duration,
                    error: m.error ? m.error.code : null}))"""
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return PageReport(errors, media)
