"""Debian's Chromium driven by Python Playwright, and axe-core injected into pages.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (installed by
``scripts/browser.sh``) with the flags a closed network needs. Tests that need a browser
use :func:`browser` (skipped with a clear reason when Chromium is missing) and
:func:`axe_violations` for accessibility (serious and critical violations only). Under
``CI=true`` a missing Chromium or axe-core fails the test instead: CI installs both
(``scripts/browser.sh``), so a skip there would hide that the proof never ran.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
AXE_JS = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(__file__).parent / "screenshots"  # git-ignored

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where the browser tests must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium for one test module (use it from a module-scoped fixture)."""
    if not CHROMIUM.exists():
        missing("Debian's chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def axe_violations(
    page: Any, impacts: tuple[str, ...] = ("serious", "critical")
) -> list[dict[str, Any]]:
    """Run axe-core in ``page`` and return the violations of the given impacts."""
    if not AXE_JS.exists():
        missing("axe-core is not installed (make browser)")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Evaluated through the DevTools protocol rather than added as a <script>: a page
        # with a strict CSP (Keyfob's own: default-src 'none') refuses inline scripts,
        # and the test must see the page exactly as it is served.
        page.evaluate("(src) => { (0, eval)(src); }", AXE_JS.read_text(encoding="utf-8"))
    result = page.evaluate("async () => JSON.stringify(await axe.run(document))")
    violations: list[dict[str, Any]] = json.loads(result)["violations"]
    return [v for v in violations if v.get("impact") in impacts]


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under tests/screenshots/ (git-ignored) for a person."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
