"""Attacks on the terms check (issue 11): every way a pasted credential could hide its
shape, every Anthropic consumer form, ChatGPT/Codex sign-in, Gemini's newer keys, and a
forbidden credential stored before the check knew it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyfob.terms import check_credential, clean_credential
from keyfob.terms.registry import CREDENTIAL_FILE, MALFORMED, RULES
from keyfob.terms.table import rows
from tests.gateway_inproc import mint
from tests.oauth_app import InProcess

OAT = "sk-ant-oat01-" + "a" * 90 + "AA"
ORT = "sk-ant-ort01-" + "b" * 90 + "AA"
SID = "sk-ant-sid01-" + "c" * 90 + "AA"
ANTHROPIC_API = "sk-ant-api03-" + "d" * 90 + "AA"
OPENAI_API = "sk-proj-" + "e" * 60


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def jwt(claims: dict[str, object]) -> str:
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.{'s' * 43}"


CHATGPT_ACCESS = jwt(
    {
        "iss": "https://auth.openai.com",
        "aud": ["https://api.openai.com/v1"],
        "https://api.openai.com/auth": {"chatgpt_account_id": "x", "chatgpt_plan_type": "plus"},
        "exp": 1_900_000_000,
    }
)
GOOGLE_ID_TOKEN = jwt({"iss": "https://accounts.google.com", "aud": "681255809395-x", "sub": "1"})
CLAUDE_CODE_FILE = json.dumps(
    {
        "claudeAiOauth": {
            "accessToken": OAT,
            "refreshToken": ORT,
            "expiresAt": 1_900_000_000_000,
            "scopes": ["user:inference"],
            "subscriptionType": "max",
        }
    },
    indent=2,
)
CODEX_AUTH_FILE = json.dumps(
    {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": jwt({"iss": "https://auth.openai.com", "email": "a@b.c"}),
            "access_token": CHATGPT_ACCESS,
            "refresh_token": "rt_" + "r" * 40,
            "account_id": "acc",
        },
    }
)

WRAPPINGS = [
    lambda k: k,
    lambda k: "\u200b" + k,
    lambda k: "\ufeff" + k,
    lambda k: "\u2060\u200d" + k + "\u200c",
    lambda k: k[:10] + "\u200b" + k[10:],  # inside the prefix
    lambda k: "  \t" + k + "\n",
    lambda k: "Bearer " + k,
    lambda k: "bearer\t" + k,
    lambda k: "Authorization: Bearer " + k,
    lambda k: "x-api-key: " + k,
    lambda k: f'"{k}"',
    lambda k: f"'Bearer {k}'",
    lambda k: json.dumps({"api_key": k}),
    lambda k: json.dumps([{"nested": {"deeper": [k]}}]),
]


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        (OAT, "claude_subscription_oauth"),
        (ORT, "claude_subscription_oauth"),
        (SID, "claude_ai_session_key"),
        ("sk-ant-admin01-" + "z" * 80, "claude_consumer_credential"),
        ("sk-ant-xyz99-" + "z" * 80, "claude_consumer_credential"),
    ],
)
@pytest.mark.parametrize("wrap", range(len(WRAPPINGS)))
def test_every_anthropic_consumer_form_refused_however_wrapped(
    key: str, rule: str, wrap: int
) -> None:
    pasted = WRAPPINGS[wrap](key)
    verdict = check_credential("anthropic", pasted)
    assert not verdict.allowed, (rule, pasted)
    assert verdict.credential_kind == rule
    assert "code.claude.com legal-and-compliance" in verdict.explanation
    assert key not in verdict.explanation and key[14:40] not in verdict.explanation


@pytest.mark.parametrize(
    ("pasted", "rule"),
    [
        (CLAUDE_CODE_FILE, "claude_subscription_oauth"),
        (CODEX_AUTH_FILE, "chatgpt_codex_signin"),
        (CHATGPT_ACCESS, "chatgpt_codex_signin"),
        ("Bearer " + CHATGPT_ACCESS, "chatgpt_codex_signin"),
        ("\ufeff" + CHATGPT_ACCESS, "chatgpt_codex_signin"),
        ("sess-" + "q" * 40, "chatgpt_codex_signin"),
        (GOOGLE_ID_TOKEN, "gemini_cli_oauth"),
        ('{"client_id": "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps"}', "gemini_cli_oauth"),
        ("\u200bya29.a0AfH6SM" + "x" * 40, "gemini_cli_oauth"),
        ('{"note": "no key in here"}', "credential_file"),
        ('{"truncated": "sk-', "credential_file"),
        ("[1, 2, 3]", "credential_file"),
        ("sk-proj-abc def" + "x" * 20, "malformed"),
        ("sk-proj-" + "x" * 20 + "\r\nX-Evil: 1", "malformed"),
        ("abc\x00def", "malformed"),
    ],
)
def test_sign_in_tokens_and_files_refused(pasted: str, rule: str) -> None:
    verdict = check_credential("openai", pasted)
    assert not verdict.allowed and verdict.credential_kind == rule, verdict
    assert "rule" in verdict.explanation and "source" in verdict.explanation


@pytest.mark.parametrize(
    ("pasted", "kind", "clean"),
    [
        ("AQ.Ab8RN6" + "k" * 40, "gemini_api_key", None),
        ("\u200bAQ.Ab8RN6" + "k" * 40, "gemini_api_key", "AQ.Ab8RN6" + "k" * 40),
        ("AIzaSy" + "q" * 33, "gemini_api_key", None),
        ("Bearer " + ANTHROPIC_API, "anthropic_api_key", ANTHROPIC_API),
        ("\ufeff" + OPENAI_API + "\n", "openai_api_key", OPENAI_API),
        ("Authorization: Bearer " + OPENAI_API, "openai_api_key", OPENAI_API),
        (jwt({"iss": "https://idp.example", "sub": "svc"}), "api_key", None),
        ("local-server-key", "api_key", None),
    ],
)
def test_api_keys_allowed_and_cleaned(pasted: str, kind: str, clean: str | None) -> None:
    verdict = check_credential("openai", pasted)
    assert verdict.allowed and verdict.credential_kind == kind
    assert clean_credential(pasted) == (clean or pasted)


def test_registry_dates_and_sources_updated() -> None:
    by_id = {r.credential: r for r in RULES}
    assert "2026-02" in by_id["claude_subscription_oauth"].source
    assert "2026-02" in by_id["gemini_cli_oauth"].source
    assert "AQ." in by_id["gemini_api_key"].summary
    for rule in ("claude_subscription_oauth", "claude_ai_session_key", "gemini_api_key"):
        assert by_id[rule].checked == "2026-12"
    listed = {r[0] for r in rows()}
    assert {CREDENTIAL_FILE.credential, MALFORMED.credential} <= listed


def test_bad_json_in_a_paste_never_raises() -> None:
    for pasted in ("{" * 5000, "[" * 5000 + "]" * 5000, '{"a": "\\ud800"}', "{\x00}"):
        assert not check_credential("openai", pasted).allowed


def test_a_forbidden_credential_stored_earlier_is_never_sent(tmp_path: Path) -> None:
    """A row written before the check knew the shape (straight into the store): the
    gateway's own check before each call refuses it, and nothing goes upstream."""
    with InProcess(tmp_path / "data", models=()) as app:
        kf = app.app.state.kf

        async def plant() -> None:
            from keyfob.tokens import new_id

            pid = new_id()
            await app.store.providers.add(
                user_id=app.owner.id,
                name="sneaky",
                kind="openai_compatible",
                base_url="http://127.0.0.1:9/v1",
                credential_envelope=kf.vault.encrypt("\u200bBearer " + OAT, context=pid),
                credential_kind="api_key",
                is_local=True,
                models=["m"],
                provider_id=pid,
            )

        app.run(plant)
        token = mint(app, ["sneaky/m"])
        answer = app.client.post(
            "/v1/chat/completions",
            json={"model": "sneaky/m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error["code"] == "credential_forbidden_by_terms"
        assert "claude_subscription_oauth" in error["message"] and OAT not in answer.text


# --- invisible and look-alike characters, at random (Hypothesis) --------------------------

#: Every forbidden form the registry knows, bare.
FORBIDDEN_FORMS = [
    OAT,
    ORT,
    SID,
    "sk-ant-admin01-" + "z" * 80,
    "sk-ant-xyz99-" + "z" * 80,
    CHATGPT_ACCESS,
    "sess-" + "q" * 40,
    "ya29.a0AfH6SM" + "x" * 40,
    GOOGLE_ID_TOKEN,
]
#: Characters that show as nothing: the ones named by the audit (combining grapheme
#: joiner, variation selector 16, Hangul filler) and their kind.
NAMED_INVISIBLE = "\u034f\ufe0f\u3164\u115f\u1160\uffa0\u17b4\u180b\u180f\u2800\ufe00\U000e0001"
invisible = st.one_of(
    st.sampled_from(NAMED_INVISIBLE),
    st.characters(categories=["Cf"]),  # every format character
    st.characters(min_codepoint=0xFE00, max_codepoint=0xFE0F),  # variation selectors
    st.characters(min_codepoint=0xE0100, max_codepoint=0xE01EF),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(FORBIDDEN_FORMS),
    st.text(invisible, max_size=4),
    st.text(invisible, max_size=3),
    st.text(invisible, max_size=4),
    st.integers(0, 20),
)
def test_invisible_characters_never_hide_a_forbidden_credential(
    key: str, before: str, inside: str, after: str, at: int
) -> None:
    pasted = before + key[:at] + inside + key[at:] + after
    verdict = check_credential("anthropic", pasted)
    assert not verdict.allowed, (pasted.encode("unicode_escape"), verdict.credential_kind)
    # stripped, the credential is recognised for what it is (not only "malformed")
    assert verdict.credential_kind == check_credential("anthropic", key).credential_kind
    assert clean_credential(pasted) == key


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(FORBIDDEN_FORMS),
    st.text(st.characters(min_codepoint=0x80), min_size=1, max_size=3),
    st.integers(0, 20),
)
def test_any_character_outside_ascii_anywhere_is_refused(key: str, odd: str, at: int) -> None:
    """A look-alike letter or a combining mark inside the prefix breaks the prefix match:
    what is left outside ASCII is refused as malformed, never allowed as an API key."""
    pasted = key[:at] + odd + key[at:]
    assert not check_credential("openai", pasted).allowed, pasted.encode("unicode_escape")


def test_the_audits_three_characters() -> None:
    for char in ("\u034f", "\ufe0f", "\u3164"):
        verdict = check_credential("anthropic", char + OAT)
        assert verdict.credential_kind == "claude_subscription_oauth"
        assert clean_credential(char + OAT) == OAT
    # a homoglyph (Cyrillic a) in the prefix: no rule matches, and it is no API key
    assert check_credential("anthropic", OAT.replace("ant", "\u0430nt")).credential_kind == (
        "malformed"
    )
    assert check_credential("openai", "sk-proj-caf\u00e9" + "x" * 30).credential_kind == "malformed"
