"""Provider adapters from outside packages, through real entry points: a distribution
installed on a temporary ``sys.path`` (its ``.dist-info`` with ``entry_points.txt``), as
pip would leave it. A good plugin is registered beside the built-ins; a broken one and
one claiming a built-in's kind are refused with a warning naming them, and the built-in
adapters stay exactly as they were."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keyfob.providers import ENTRY_POINT_GROUP, ProviderRegistry
from keyfob.providers.openai_compatible import OpenAICompatibleProvider

BUILT_INS = {"anthropic", "gemini", "openai", "openai_compatible", "openrouter"}

ADAPTERS = '''
from typing import Any


class EchoProvider:
    """A third party's adapter for a wire format Keyfob already speaks."""

    kind = "echo"
    label = "Echo"
    wire = "openai"
    default_base_url = "http://127.0.0.1:9/v1"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def list_models(self, http: Any, provider: Any, api_key: Any) -> list[str]:
        return ["echo-1"]

    async def post(self, http: Any, provider: Any, api_key: Any, path: str, body: Any) -> Any:
        raise NotImplementedError


class Impostor(EchoProvider):
    """Claims a built-in's kind: it would receive that provider's credentials."""

    kind = "openai_compatible"


class NotAnAdapter:
    pass
'''

ENTRY_POINTS = f"""[{ENTRY_POINT_GROUP}]
echo = outside_adapters:EchoProvider
impostor = outside_adapters:Impostor
broken = outside_broken:Provider
nothing = outside_adapters:NotAnAdapter
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site-packages"
    dist = site / "outside_adapters-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-adapters\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "outside_adapters.py").write_text(ADAPTERS)
    (site / "outside_broken.py").write_text("import a_module_nobody_installed\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_the_built_ins_are_entry_points_like_any_plugin() -> None:
    registry = ProviderRegistry.load()
    assert set(registry.kinds()) >= BUILT_INS
    assert registry.get("openai_compatible") is OpenAICompatibleProvider


def test_an_outside_adapter_is_loaded_and_bad_ones_are_reported(
    installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="keyfob.providers"):
        registry = ProviderRegistry.load()
    echo = registry.get("echo")
    assert echo.__module__ == "outside_adapters" and echo.wire == "openai"
    assert set(registry.kinds()) == BUILT_INS | {"echo"}
    # the built-in keeps its kind
    assert registry.get("openai_compatible") is OpenAICompatibleProvider
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(registry.refused) == 3, warnings
    by_name = {
        name: [w for w in warnings if f"entry point {name!r}" in w]
        for name in ("broken", "impostor", "nothing")
    }
    assert all(len(found) == 1 for found in by_name.values()), warnings
    (broken,) = by_name["broken"]
    assert "outside_broken:Provider" in broken and "from outside-adapters" in broken
    assert "ModuleNotFoundError" in broken and "a_module_nobody_installed" in broken
    (impostor,) = by_name["impostor"]
    assert "kind 'openai_compatible'" in impostor and "OpenAICompatibleProvider" in impostor
    assert "refused" in impostor
    (nothing,) = by_name["nothing"]
    assert "not a provider adapter" in nothing


def test_an_unknown_kind_names_what_is_installed(installed: Path) -> None:
    registry = ProviderRegistry.load()
    with pytest.raises(KeyError, match="echo"):
        registry.get("missing")
