"""Provider terms as found (docs/DESIGN-NOTES.md, "Provider terms, as found"), one frozen
rule per credential kind.

Rules are matched in order; the first whose pattern matches the credential decides.
Forbidden rules come first so a narrow forbidden prefix (``sk-ant-oat``) wins over a
broad allowed one (``sk-ant-``). A credential no rule recognises is treated as a
per-token-billed API key, which every provider we know allows in third-party apps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

VerdictKind = Literal["allowed", "forbidden"]

CHECKED = "2026-11"


@dataclass(frozen=True)
class Rule:
    #: A stable id of the credential kind, stored as the provider's ``credential_kind``.
    credential: str
    #: Regular expression searched in the credential (anchored where it is a prefix).
    pattern: str
    verdict: VerdictKind
    summary: str
    #: Where the rule comes from (no URL scheme: a reference a person can look up).
    source: str
    checked: str = CHECKED

    def matches(self, credential: str) -> bool:
        return re.search(self.pattern, credential) is not None


RULES: tuple[Rule, ...] = (
    Rule(
        credential="claude_subscription_oauth",
        # access (oat) and refresh (ort) tokens of Claude Free/Pro/Max sign-in
        pattern=r"^\s*sk-ant-o[ar]t",
        verdict="forbidden",
        summary=(
            "Claude Free/Pro/Max subscription OAuth tokens (access sk-ant-oat..., refresh "
            "sk-ant-ort...) are for Claude Code and Claude.ai only: not in any other "
            "product (the Agent SDK included), nor collected, stored or intermediated by "
            "one, and third parties may not offer a Claude.ai login; link an Anthropic API "
            "key (sk-ant-api...) instead"
        ),
        source=(
            "Anthropic: code.claude.com legal-and-compliance (changed 2026-02-17/18; "
            "server-side blocking reported from 2026-01-09)"
        ),
        checked="2026-12",
    ),
    Rule(
        credential="claude_ai_session_key",
        pattern=r"^\s*sk-ant-sid",
        verdict="forbidden",
        summary=(
            "a claude.ai session key (sk-ant-sid...) is a consumer sign-in; consumer "
            "credentials are for Claude Code and Claude.ai only, never another product; "
            "link an Anthropic API key (sk-ant-api...) instead"
        ),
        source="Anthropic: code.claude.com legal-and-compliance (changed 2026-02-17/18)",
        checked="2026-12",
    ),
    Rule(
        credential="claude_consumer_credential",
        # any other sk-ant- form (or a Claude Code credentials file): not an API key, so
        # refused until the registry knows it (fail closed)
        pattern=r"^\s*sk-ant-(?!api)|claudeAiOauth|\bclaude\.ai\b|console\.anthropic\.com/oauth",
        verdict="forbidden",
        summary=(
            "an Anthropic credential that is not an API key (Claude Code's credentials "
            "file, a Claude.ai sign-in or an unknown sk-ant- form); only API keys "
            "(sk-ant-api...) may serve third-party apps"
        ),
        source="Anthropic: code.claude.com legal-and-compliance (changed 2026-02-17/18)",
        checked="2026-12",
    ),
    Rule(
        credential="gemini_cli_oauth",
        # The Gemini CLI's oauth_creds.json, its public OAuth client id, or a bare Google
        # OAuth token (ya29. access / 1// refresh), which Keyfob cannot tell apart from it.
        pattern=(
            r"681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j|\"refresh_token\"\s*:"
            r"|^\s*ya29\.|^\s*1//|accounts\.google\.com"
        ),
        verdict="forbidden",
        summary=(
            "Gemini CLI (and Antigravity) OAuth credentials may not be used from "
            "third-party software, proxying them included (accounts get suspended); link "
            "a Gemini API key (AIza... or AQ....) instead"
        ),
        source=("Google: gemini-cli docs/resources/tos-privacy.md (proxying banned 2026-02)"),
        checked="2026-12",
    ),
    Rule(
        credential="chatgpt_codex_signin",
        # Codex CLI's auth.json ("tokens"/"id_token"/"account_id"), a ChatGPT access token
        # (a JWT issued by auth.openai.com with https://api.openai.com/ claims), or an old
        # ChatGPT session token.
        pattern=(
            r"\"id_token\"\s*:|\"account_id\"\s*:|auth\.openai\.com|api\.openai\.com/auth"
            r"|chatgpt\.com|^\s*sess-"
        ),
        verdict="forbidden",
        summary=(
            "ChatGPT/Codex sign-in has no official third-party flow and uses "
            "undocumented endpoints; Keyfob does not intermediate it. Link an OpenAI "
            "API key instead"
        ),
        source="OpenAI: developers.openai.com codex-for-oss; Codex app-server docs",
        checked="2026-12",
    ),
    Rule(
        credential="anthropic_api_key",
        pattern=r"^\s*sk-ant-api",
        verdict="allowed",
        summary="Anthropic API keys are billed to the key owner and may serve any app",
        source="Anthropic: commercial terms of service",
    ),
    Rule(
        credential="openrouter_key",
        pattern=r"^\s*sk-or-",
        verdict="allowed",
        summary="OpenRouter keys (API or PKCE) are made for apps, with per-key limits",
        source="OpenRouter: openrouter.ai docs, OAuth PKCE",
    ),
    Rule(
        credential="openai_api_key",
        pattern=r"^\s*sk-(proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}",
        verdict="allowed",
        summary="OpenAI API keys are billed per token and may serve any app",
        source="OpenAI: terms of use",
    ),
    Rule(
        credential="gemini_api_key",
        # classic keys (AIza...) and the auth keys with the AQ. prefix that replace
        # unrestricted keys during 2026
        pattern=r"^\s*(AIza|AQ\.)",
        verdict="allowed",
        summary=(
            "Gemini API keys (AIza... and AQ....) are billed to the key owner and may serve any app"
        ),
        source="Google: Gemini API additional terms of service; ai.google.dev api-key docs",
        checked="2026-12",
    ),
    Rule(
        credential="huggingface_token",
        pattern=r"^\s*hf_",
        verdict="allowed",
        summary="Hugging Face tokens (inference-api scope) are billed to their owner",
        source="Hugging Face: hub-docs oauth.md",
    ),
)

#: A JSON document with no credential the registry knows: a file, not a key.
CREDENTIAL_FILE = Rule(
    credential="credential_file",
    pattern=r"",
    verdict="forbidden",
    summary=(
        "a JSON credentials file is not an API key (and sign-in files are what the "
        "providers' terms forbid sharing); paste the API key itself"
    ),
    source="Keyfob terms registry (docs/DESIGN-NOTES.md, provider terms)",
    checked="2026-12",
)

#: Text with spaces or control characters inside: no provider's key, and unsafe in a header.
MALFORMED = Rule(
    credential="malformed",
    pattern=r"",
    verdict="forbidden",
    summary=(
        "the credential contains spaces, control characters or characters outside ASCII, "
        "so it is not an API key"
    ),
    source="Keyfob terms registry (RFC 9110 field values)",
    checked="2026-12",
)

#: The verdict for a credential no rule recognises (a generic per-token API key).
GENERIC_API_KEY = Rule(
    credential="api_key",
    pattern=r"",
    verdict="allowed",
    summary="a per-token-billed API key, allowed in third-party apps by every provider known",
    source="Keyfob terms registry default (docs/DESIGN-NOTES.md, provider terms)",
)

#: The verdict for a provider with no credential at all (a local server, say).
NO_CREDENTIAL = Rule(
    credential="none",
    pattern=r"",
    verdict="allowed",
    summary="no credential: the owner's own server",
    source="Keyfob terms registry default (docs/DESIGN-NOTES.md, provider terms)",
)
