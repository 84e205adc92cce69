"""Model names: canonical ids always work, bare names follow the person's preference
order, aliases rename models without widening a grant; the CLI that sets all three."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyfob.cli import app as cli_app
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.models import AliasRefused, check_alias, granted_models, resolve
from keyfob.gateway.state import GatewayState
from keyfob.store.records import Catalog, Grant, Provider
from tests.fake_upstream import FakeUpstream
from tests.gateway_inproc import link, mint, sdk
from tests.oauth_app import InProcess


def provider(name: str, *models: str) -> Provider:
    return Provider(
        name, "u", name, "openai_compatible", "http://x", None, "api_key", True, models, 0
    )


def grant(*models: str) -> Grant:
    return Grant("g", "u", "c", models, 0, "month", "UTC", 0.0, 0.0, None)


CATALOG = Catalog(
    [provider("b", "m", "only-b"), provider("a", "m", "vendor/x")],
    {"fast": "a/m", "cheap": "only-b", "ghost": "gone/m"},
)


def test_canonical_bare_and_alias_resolution() -> None:
    everything = grant("a/*", "b/*")
    assert resolve(everything, CATALOG, "a/m").canonical == "a/m"
    assert resolve(everything, CATALOG, "m").canonical == "b/m"  # preference order
    assert resolve(grant("a/m"), CATALOG, "m").canonical == "a/m"  # first *allowed* one
    assert resolve(everything, CATALOG, "fast").canonical == "a/m"
    assert resolve(everything, CATALOG, "cheap").canonical == "b/only-b"
    # a model name with a '/' of its own, as a bare name
    assert resolve(everything, CATALOG, "vendor/x").canonical == "a/vendor/x"
    # an alias never widens the grant: its target is checked like any request
    with pytest.raises(GatewayError) as nf:
        resolve(grant("b/m"), CATALOG, "fast")
    assert nf.value.status == 404
    with pytest.raises(GatewayError):
        resolve(everything, CATALOG, "ghost")
    # the person's downgrade model may be an alias too
    assert resolve(grant(), CATALOG, "fast", allow_any=True).canonical == "a/m"
    # a plain list (no aliases) still resolves as before
    assert resolve(everything, list(CATALOG), "m").canonical == "b/m"


def test_granted_models_lists_usable_aliases() -> None:
    ids = [cid for cid, _ in granted_models(grant("a/m", "b/only-b"), CATALOG)]
    assert ids == ["a/m", "b/only-b", "cheap", "fast"]
    assert [cid for cid, _ in granted_models(grant("b/m"), CATALOG)] == ["b/m"]


def test_alias_validation() -> None:
    assert check_alias("quick", "a/m", CATALOG) == "a/m"
    assert check_alias("quick", " only-b ", CATALOG) == "only-b"
    for name, target, why in [
        ("a/m", "b/m", "no '/'"),
        ("", "b/m", "1-128"),
        ("quick", "nobody/m", "no linked provider"),
        ("quick", "fast", "alias itself"),
        ("quick", "a m", "without spaces"),
    ]:
        with pytest.raises(AliasRefused, match=why):
            check_alias(name, target, CATALOG)


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


def test_gateway_uses_order_and_aliases(tmp_path: Path, up: FakeUpstream) -> None:
    with InProcess(tmp_path / "data", models=()) as app:
        link(app, "first", up.url("first/v1"), models=["m"])
        link(app, "second", up.url("second/v1"), models=["m"])
        token = mint(app, ["first/m", "second/m"])
        store, owner = app.store, app.owner
        assert app.run(store.providers.set_order, owner.id, ["second"]) == ["second", "first"]
        app.run(store.providers.set_alias, owner.id, "fast", "first/m")
        with sdk(app, token) as c:
            done = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert done.choices[0].message.content == "second answer 0"
            aliased = c.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hi"}]
            )
            assert aliased.choices[0].message.content == "first answer 0"
            assert "fast" in [m.id for m in c.models.list()]
            # the order changes; the gateway sees it once its few-second snapshot expires
            app.run(store.providers.set_order, owner.id, ["first", "second"])
            GatewayState.of(app.app).providers.clear()
            again = c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert again.choices[0].message.content == "first answer 0"
        # the upstream received its own model name, never the alias
        assert {b["model"] for b in up.bodies("first")} == {"m"}


def test_cli_models_aliases_order_and_fallback_chain(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with InProcess(data, models=("m1", "m2")) as app:
        link(app, "other", "http://127.0.0.1:9/v1", models=["m1", "m3"])
        mint(app, ["fake/m1"], client_name="Chain app")
    runner = CliRunner()
    env = {"KEYFOB_DATA_DIR": str(data), "COLUMNS": "200"}

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli_app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    assert "other, fake" in run("providers", "order", "other")
    assert "no provider named 'nope'" in run("providers", "order", "nope", code=1)
    assert "fast -> fake/m2" in run("models", "alias", "fast", "fake/m2")
    assert "no linked provider" in run("models", "alias", "bad", "nowhere/m", code=1)
    listing = run("models", "list")
    for cid in ("fake/m1", "fake/m2", "other/m1", "other/m3"):
        assert cid in listing
    assert "local" in listing  # the price source
    [line] = [ln for ln in listing.splitlines() if "fake/m2" in ln]
    assert "fast" in line
    assert "removed" in run("models", "unalias", "fast")
    assert "no alias" in run("models", "unalias", "fast", code=1)
    shown = run("apps", "policy", "Chain app", "--fallback-chain", "other/m1, fake/m2")
    assert '"fallback_chain": ["other/m1", "fake/m2"]' in shown
    assert "PROVIDER/MODEL" in run("apps", "policy", "Chain app", "--fallback-chain", "x", code=1)
    assert "fallback_chain" not in run("apps", "policy", "Chain app", "--fallback-chain", "")
