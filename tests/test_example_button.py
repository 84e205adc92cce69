"""The "Sign in with Keyfob" button (examples/button) as a browser loads it: both SVG
files are well-formed SVG that Chromium renders (as documents and as images), and the
example page, served over HTTP, follows the system's light or dark mode with no console
error, no horizontal overflow on a phone and no serious or critical axe-core violation."""

from __future__ import annotations

import functools
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import axe_violations, browser, screenshot

BUTTON = Path(__file__).resolve().parent.parent / "examples" / "button"
SVGS = ("sign-in-with-keyfob-light.svg", "sign-in-with-keyfob-dark.svg", "keyfob-mark.svg")
SVG_NS = "{http://www.w3.org/2000/svg}"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(BUTTON))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.mark.parametrize("name", SVGS)
def test_svg_files_are_well_formed_and_labelled(name: str) -> None:
    root = ET.parse(BUTTON / name).getroot()
    assert root.tag == f"{SVG_NS}svg" and root.get("viewBox")
    if name.startswith("sign-in"):
        assert root.get("role") == "img" and root.get("aria-label") == "Sign in with Keyfob"
        title = root.find(f"{SVG_NS}title")
        assert title is not None and title.text == "Sign in with Keyfob"
        [text] = root.iter(f"{SVG_NS}text")
        assert text.text == "Sign in with Keyfob"


@pytest.mark.parametrize("name", SVGS)
def test_chromium_renders_each_svg(site: str, chrome: Any, name: str) -> None:
    page = chrome.new_page()
    failed: list[str] = []
    # a bare SVG document has no <link rel="icon">: the browser's own /favicon.ico guess
    # is the site's business, not the file's
    page.on(
        "response",
        lambda r: failed.append(r.url) if r.status >= 400 and "favicon" not in r.url else None,
    )
    try:
        response = page.goto(f"{site}/{name}")
        assert response is not None and response.status == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        # an XML error would give Chromium's <parsererror> page instead of the drawing
        assert page.evaluate("() => document.documentElement.localName") == "svg"
        assert page.evaluate("() => document.getElementsByTagName('parsererror').length") == 0
        box = page.evaluate(
            "() => { const r = document.documentElement.getBoundingClientRect();"
            " return [r.width, r.height]; }"
        )
        assert box[0] > 0 and box[1] > 0
        if name.startswith("sign-in"):
            # the label fits inside the button with room to spare, in whatever font this
            # browser picks for system-ui (here a wide fallback): never clipped
            end, inner = page.evaluate(
                "() => { const t = document.querySelector('text').getBBox();"
                " const r = document.querySelector('rect').getBBox();"
                " return [t.x + t.width, r.x + r.width]; }"
            )
            assert end <= inner - 8, f"the label ends at {end:.1f}, the button at {inner:.1f}"
        assert not failed, failed
    finally:
        page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_example_page_in_both_themes(site: str, chrome: Any, scheme: str, width: int) -> None:
    context = chrome.new_context(viewport={"width": width, "height": 800}, color_scheme=scheme)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        response = page.goto(f"{site}/index.html")
        assert response is not None and response.status == 200
        page.wait_for_load_state("load")
        assert page.title() == "Sign in with Keyfob: button"
        # both SVG images loaded and have a size
        sizes = page.evaluate(
            "() => [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])"
        )
        assert len(sizes) == 2 and all(ok and w > 0 and alt for ok, w, alt in sizes), sizes
        # the main button follows the system theme; the forced ones do not
        backgrounds = page.evaluate(
            "() => [...document.querySelectorAll('.keyfob-button')]"
            ".map(b => getComputedStyle(b).backgroundColor)"
        )
        white, ink = "rgb(255, 255, 255)", "rgb(17, 24, 39)"
        assert backgrounds == [white if scheme == "light" else ink, white, ink], backgrounds
        assert page.get_by_role("button", name="Sign in with Keyfob").is_visible()
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{overflow}px of horizontal overflow at {width} px"
        violations = axe_violations(page)
        assert not violations, [(v["id"], [n["target"] for n in v["nodes"]]) for v in violations]
        assert not errors, errors
        screenshot(page, f"example-button-{width}-{scheme}")
    finally:
        context.close()
