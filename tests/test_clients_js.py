"""The JavaScript client's own tests (clients/js/test, node:test), run from the suite so
CI runs them with everything else (``make test-js`` runs them alone): its unit tests, the
official ``@anthropic-ai/sdk`` calling through ``anthropicOptions`` against a local server
that answers like Keyfob, and ``tsc --noEmit`` over an app's use of ``keyfob.d.ts``.

The SDK and TypeScript are pinned dev dependencies (package-lock.json), installed with
``npm ci`` when missing (``scripts/browser.sh`` does the same); the package itself stays
free of runtime dependencies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chromium import missing

JS = Path(__file__).resolve().parent.parent / "clients" / "js"
NEEDED = (
    JS / "node_modules" / "@anthropic-ai" / "sdk" / "package.json",
    JS / "node_modules" / ".bin" / "tsc",
)


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        missing("node is not installed")
    assert found is not None
    if not all(p.exists() for p in NEEDED):
        npm = shutil.which("npm")
        if npm is None:
            missing("npm is not installed (the JS client's dev dependencies need npm ci)")
        assert npm is not None
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            missing(f"npm ci in clients/js failed: {done.stderr[-500:]}")
    return found


def test_node_test_suite_passes(node: str) -> None:
    result = subprocess.run(
        [node, "--test", "test/"], cwd=JS, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
    # the SDK tests ran (they skip themselves only when the SDK is not installed)
    assert "# skipped 0" in result.stdout, result.stdout[-2000:]
    assert re.search(r"^ok \d+ - messages\.create through anthropicOptions", result.stdout, re.M)


def test_types_check_with_tsc(node: str) -> None:
    tsc = JS / "node_modules" / ".bin" / "tsc"
    result = subprocess.run(
        [str(tsc), "-p", "tsconfig.json"], cwd=JS, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_package_is_ready_to_publish() -> None:
    pkg = json.loads((JS / "package.json").read_text())
    assert pkg["type"] == "module" and not pkg.get("private")
    assert not pkg.get("dependencies"), "no runtime dependencies"
    assert not pkg.get("peerDependencies") and not pkg.get("optionalDependencies")
    for name, version in pkg["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is pinned exactly"
    for path in (pkg["main"], pkg["types"], *pkg["files"]):
        assert (JS / path).is_file(), path
    assert pkg["exports"]["."]["types"] == pkg["types"]
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"][""]["devDependencies"] == pkg["devDependencies"]
