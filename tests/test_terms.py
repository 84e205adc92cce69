"""The provider-terms registry: data with sources, and refusals that cite the rule."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from keyfob.context import Keyfob
from keyfob.providers.linking import LinkRefused, link_provider
from keyfob.settings import Settings
from keyfob.terms import RULES, check_credential

CLAUDE_OAUTH = "sk-ant-oat01-" + "a" * 80
GEMINI_CLI_CREDS = (
    '{"access_token": "ya29.a0AfH6SM' + "b" * 40 + '", "refresh_token": '
    '"1//0g' + "c" * 40 + '", "token_type": "Bearer", "expiry_date": 1}'
)


def test_every_rule_has_a_source_and_a_date() -> None:
    assert RULES
    for rule in RULES:
        assert rule.source and "://" not in rule.source
        assert re.fullmatch(r"\d{4}-\d{2}", rule.checked)
        assert rule.verdict in ("allowed", "forbidden")
        re.compile(rule.pattern)
    assert len({r.credential for r in RULES}) == len(RULES)


@pytest.mark.parametrize("key", [CLAUDE_OAUTH, " " + CLAUDE_OAUTH])
def test_claude_subscription_token_is_forbidden(key: str) -> None:
    verdict = check_credential("openai_compatible", key)
    assert not verdict.allowed
    assert verdict.credential_kind == "claude_subscription_oauth"
    assert "code.claude.com legal-and-compliance" in verdict.explanation
    assert key.strip() not in verdict.explanation


@pytest.mark.parametrize("key", [GEMINI_CLI_CREDS, "ya29.a0AfH6SMxyz", "1//0gabcdef"])
def test_gemini_cli_oauth_is_forbidden(key: str) -> None:
    verdict = check_credential("openai_compatible", key)
    assert not verdict.allowed
    assert "gemini-cli docs/resources/tos-privacy.md" in verdict.explanation


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("sk-ant-api03-" + "x" * 40, "anthropic_api_key"),
        ("sk-proj-" + "y" * 40, "openai_api_key"),
        ("sk-or-v1-" + "z" * 40, "openrouter_key"),
        ("AIzaSy" + "q" * 33, "gemini_api_key"),
        ("hf_" + "h" * 30, "huggingface_token"),
        ("some-local-key", "api_key"),
    ],
)
def test_api_keys_are_allowed(key: str, kind: str) -> None:
    verdict = check_credential("openai_compatible", key)
    assert verdict.allowed
    assert verdict.credential_kind == kind


def test_no_key_is_allowed() -> None:
    assert check_credential("openai_compatible", None).credential_kind == "none"
    assert check_credential("openai_compatible", "  ").allowed


async def _try_link(data_dir: Path, api_key: str) -> None:
    kf = await Keyfob.open(Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        try:
            await link_provider(
                kf,
                user_id=owner.id,
                name="claude",
                kind="openai_compatible",
                base_url="https://api.anthropic.com/v1",
                api_key=api_key,
                models=["claude-sonnet-4"],
            )
        finally:
            assert await kf.store.providers.list(owner.id) == []
    finally:
        await kf.close()


def test_linking_refuses_forbidden_credentials_before_storing(owned_data_dir: Path) -> None:
    with pytest.raises(LinkRefused) as info:
        asyncio.run(_try_link(owned_data_dir, CLAUDE_OAUTH))
    message = str(info.value)
    assert "claude_subscription_oauth" in message and "legal-and-compliance" in message
    assert CLAUDE_OAUTH not in message
    with pytest.raises(LinkRefused, match="gemini-cli"):
        asyncio.run(_try_link(owned_data_dir, GEMINI_CLI_CREDS))


async def _link_with(data_dir: Path, *, mode: str = "personal", **kw: object) -> None:
    settings = Settings(data_dir=data_dir)
    if mode == "hosted":  # only link_provider's checks read the mode here
        settings = Settings(data_dir=data_dir, mode="hosted")
    kf = await Keyfob.open(settings)
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        args: dict[str, object] = {
            "name": "p",
            "kind": "openai_compatible",
            "base_url": "https://api.example.com/v1",
            "api_key": "sk-proj-" + "k" * 30,
            "models": ["gpt-4o-mini"],
        }
        args.update(kw)
        await link_provider(kf, user_id=owner.id, **args)  # type: ignore[arg-type]
    finally:
        await kf.close()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "a/b"}, "no '/'"),
        ({"name": ""}, "1-64"),
        ({"name": "x" * 65}, "1-64"),
        ({"kind": "nope"}, "no provider adapter"),
        ({"base_url": "ftp://example.com"}, "http"),
        ({"base_url": "https://user:pw@example.com/v1"}, "user:password"),
        ({"base_url": "not a url"}, "http"),
    ],
)
def test_link_validation(owned_data_dir: Path, kw: dict[str, object], match: str) -> None:
    with pytest.raises(LinkRefused, match=match) as info:
        asyncio.run(_link_with(owned_data_dir, **kw))
    assert "k" * 30 not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "http://localhost/v1",
        "http://10.1.2.3/v1",
        "http://[::1]/v1",
        "http://169.254.169.254/latest",
    ],
)
def test_hosted_mode_refuses_private_upstreams(owned_data_dir: Path, url: str) -> None:
    with pytest.raises(LinkRefused, match=r"loopback|private"):
        asyncio.run(_link_with(owned_data_dir, mode="hosted", base_url=url))


def test_link_stores_the_key_encrypted_and_decrypts(owned_data_dir: Path) -> None:
    from keyfob.providers.linking import decrypt_key

    key = "sk-proj-" + "s" * 30

    async def go() -> None:
        kf = await Keyfob.open(Settings(data_dir=owned_data_dir))
        try:
            owner = await kf.store.users.owner()
            assert owner is not None
            p = await link_provider(
                kf,
                user_id=owner.id,
                name="oa",
                kind="openai_compatible",
                base_url="https://api.example.com/v1/",
                api_key=key,
                models=["gpt-4o-mini"],
            )
            assert p.base_url == "https://api.example.com/v1"
            assert p.credential_kind == "openai_api_key"
            assert p.credential_envelope and key not in p.credential_envelope
            assert key not in repr(p)
            assert await decrypt_key(kf, p) == key
            with pytest.raises(LinkRefused, match="already exists"):
                await link_provider(
                    kf,
                    user_id=owner.id,
                    name="oa",
                    kind="openai_compatible",
                    base_url="https://x.example/v1",
                    api_key=None,
                    models=["m"],
                )
        finally:
            await kf.close()

    asyncio.run(go())
    raw = (owned_data_dir / "keyfob.db").read_bytes()
    assert key.encode() not in raw


def test_link_survives_failed_model_discovery(owned_data_dir: Path, fakellm: object) -> None:
    async def go() -> list[str]:
        kf = await Keyfob.open(Settings(data_dir=owned_data_dir))
        try:
            owner = await kf.store.users.owner()
            assert owner is not None
            p = await link_provider(
                kf,
                user_id=owner.id,
                name="fake",
                kind="openai_compatible",
                base_url=fakellm.base_url,  # type: ignore[attr-defined]
                api_key=None,
                models=[],
                is_local=True,
            )
            return list(p.models)
        finally:
            await kf.close()

    assert asyncio.run(go()) == []  # fakellm has no GET /models: best effort, empty list
