"""The JavaScript client's own tests (clients/js/test, node:test), run from the suite so
CI runs them with everything else (``make test-js`` runs them alone)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent.parent / "clients" / "js"


def test_node_test_suite_passes() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run(
        [node, "--test", "test/"], cwd=JS, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


def test_package_is_ready_to_publish() -> None:
    pkg = json.loads((JS / "package.json").read_text())
    assert pkg["type"] == "module" and not pkg.get("private")
    assert not pkg.get("dependencies"), "no runtime dependencies"
    for path in (pkg["main"], pkg["types"], *pkg["files"]):
        assert (JS / path).is_file(), path
    assert pkg["exports"]["."]["types"] == pkg["types"]
