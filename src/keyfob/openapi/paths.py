"""The paths of the OpenAPI document: gateway surfaces, Keyfob's own API, OAuth."""

from __future__ import annotations

from typing import Any

from keyfob.oauth import rfc8414, rfc8628, rfc9728
from keyfob.openapi.schemas import (
    FORM,
    HTML,
    JSON,
    KEYFOB_HEADERS,
    SSE,
    errors,
    json_content,
    ref,
)

BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


def _metered(
    summary: str, request: str, answer: str, *, error: str = "OpenAIError", stream: bool = True
) -> dict[str, Any]:
    content: dict[str, Any] = json_content(ref(answer))
    if stream:
        content[SSE] = {
            "schema": {
                "type": "object",
                "description": "With `stream: true`, each server-sent event: the provider's "
                "events as they arrive (JSON in `data`), an SSE comment "
                "`: keyfob-cost-usd=...` before the terminal event.",
                "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
            }
        }
    return {
        "post": {
            "summary": summary,
            "tags": ["gateway"],
            "security": BEARER,
            "requestBody": {"required": True, "content": json_content(ref(request))},
            "responses": {
                "200": {
                    "description": "The answer.",
                    "headers": KEYFOB_HEADERS,
                    "content": content,
                },
                **errors(error, retry=True),
            },
        }
    }


def _get(summary: str, tag: str, answer: str, *, params: list[Any] | None = None) -> Any:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "security": BEARER,
        "responses": {
            "200": {"description": "OK", "content": json_content(ref(answer))},
            **errors("OpenAIError"),
        },
    }
    if params:
        op["parameters"] = params
    return {"get": op}


def _query(name: str, text: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": text, "schema": schema}


def _form_post(
    summary: str, fields: dict[str, Any], required: list[str], answer: str, *, ok: str = "200"
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["oauth"],
            "requestBody": {
                "required": True,
                "content": {
                    FORM: {"schema": {"type": "object", "properties": fields, "required": required}}
                },
            },
            "responses": {
                ok: {"description": "OK", "content": json_content(ref(answer))},
                **errors("OAuthError"),
            },
        }
    }


_S = {"type": "string"}
_SUGGESTIONS = {
    "keyfob_cap_usd": "Suggested spending cap in USD (`5`, `2.50`).",
    "keyfob_window": "Its calendar window: `day`, `week` or `month`.",
    "keyfob_models": "Canonical model ids to pre-select, space-separated.",
    "keyfob_expires_in": "Seconds until the grant ends by itself (60 to 31622400).",
}


def paths() -> dict[str, Any]:
    usage_params = [
        _query("by", "Group by any of app,model,day.", _S),
        _query("format", "json or csv.", {"type": "string", "enum": ["json", "csv"]}),
        _query("since", "First day (YYYY-MM-DD, the person's zone).", _S),
        _query("until", "Last day (YYYY-MM-DD).", _S),
    ]
    authorize_params = [
        {"name": n, "in": "query", "required": n != "state", "schema": _S}
        for n in (
            "response_type",
            "client_id",
            "redirect_uri",
            "code_challenge",
            "code_challenge_method",
            "state",
        )
    ] + [_query(n, text, _S) for n, text in _SUGGESTIONS.items()]
    return {
        "/v1/chat/completions": _metered(
            "OpenAI chat completions, metered", "ChatRequest", "ChatCompletion"
        ),
        "/v1/responses": _metered(
            "OpenAI Responses API (over chat completions, no server-side state)",
            "ResponsesRequest",
            "Response",
        ),
        "/v1/embeddings": _metered(
            "OpenAI embeddings, metered", "EmbeddingsRequest", "Embeddings", stream=False
        ),
        "/v1/messages": _metered(
            "Anthropic messages, metered",
            "MessagesRequest",
            "AnthropicMessage",
            error="AnthropicError",
        ),
        "/v1/messages/count_tokens": _metered(
            "Anthropic token count (not metered)",
            "CountTokensRequest",
            "TokenCount",
            error="AnthropicError",
            stream=False,
        ),
        "/v1/models": _get("The models this app's grant allows", "gateway", "ModelList"),
        "/v1/keyfob/quote": {
            "post": {
                "summary": "Worst-case and expected cost of a chat-completions body, and "
                "whether it would be admitted now",
                "tags": ["keyfob"],
                "security": BEARER,
                "requestBody": {"required": True, "content": json_content(ref("ChatRequest"))},
                "responses": {
                    "200": {"description": "The quote.", "content": json_content(ref("Quote"))},
                    **errors("OpenAIError"),
                },
            }
        },
        "/v1/keyfob/allowance": _get(
            "Every limit of the grant: cap, spent, held, left, reset; the grant's end",
            "keyfob",
            "Allowance",
        ),
        "/v1/keyfob/usage": {
            "get": {
                "summary": "The grant's usage, grouped",
                "tags": ["keyfob"],
                "security": BEARER,
                "parameters": usage_params,
                "responses": {
                    "200": {
                        "description": "JSON, or CSV with `format=csv`.",
                        "content": {
                            JSON: {"schema": ref("Usage")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **errors("OpenAIError"),
                },
            }
        },
        rfc8414.METADATA_PATH: {
            "get": {
                "summary": "Authorization server metadata (RFC 8414)",
                "tags": ["oauth"],
                "responses": {
                    "200": {"description": "OK", "content": json_content(ref("ServerMetadata"))}
                },
            }
        },
        rfc9728.METADATA_PATH: {
            "get": {
                "summary": "Protected resource metadata (RFC 9728)",
                "tags": ["oauth"],
                "responses": {
                    "200": {"description": "OK", "content": json_content(ref("ResourceMetadata"))}
                },
            }
        },
        rfc8414.AUTHORIZATION_PATH: {
            "get": {
                "summary": "Authorization request (RFC 6749 4.1, PKCE S256): the person "
                "logs in and sees the consent page",
                "tags": ["oauth"],
                "parameters": authorize_params,
                "responses": {
                    "200": {"description": "A page", "content": {HTML: {"schema": _S}}},
                    "302": {"description": "To the login page, or back to the app"},
                    "400": {"description": "An error page", "content": {HTML: {"schema": _S}}},
                },
            }
        },
        rfc8414.TOKEN_PATH: _form_post(
            "Token endpoint: authorization_code (PKCE), refresh_token (rotated), device_code",
            {
                "grant_type": _S,
                "code": _S,
                "redirect_uri": _S,
                "code_verifier": _S,
                "refresh_token": _S,
                "device_code": _S,
                "client_id": _S,
                "client_secret": _S,
                "resource": _S,
                "scope": _S,
            },
            ["grant_type"],
            "TokenResponse",
        ),
        rfc8414.DEVICE_AUTHORIZATION_PATH: _form_post(
            "Device authorization (RFC 8628); poll the token endpoint every `interval` s",
            {"client_id": _S, "scope": _S, "resource": _S, **{n: _S for n in _SUGGESTIONS}},
            ["client_id"],
            "DeviceAuthorization",
        ),
        rfc8414.REVOCATION_PATH: {
            "post": {
                "summary": "Revocation (RFC 7009); a refresh token takes its family",
                "tags": ["oauth"],
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "token": _S,
                                    "token_type_hint": _S,
                                    "client_id": _S,
                                },
                                "required": ["token"],
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "Revoked (or unknown)"},
                    **errors("OAuthError"),
                },
            }
        },
        rfc8414.INTROSPECTION_PATH: _form_post(
            "Introspection (RFC 7662), confidential clients, their own tokens",
            {"token": _S, "token_type_hint": _S, "client_id": _S, "client_secret": _S},
            ["token"],
            "Introspection",
        ),
        rfc8414.REGISTRATION_PATH: {
            "post": {
                "summary": "Dynamic registration of a public client (RFC 7591), rate-limited",
                "tags": ["oauth"],
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "required": ["redirect_uris"],
                            "properties": {
                                "client_name": _S,
                                "redirect_uris": {"type": "array", "items": _S},
                            },
                        }
                    ),
                },
                "responses": {
                    "201": {
                        "description": "Registered",
                        "content": json_content(ref("ClientRegistration")),
                    },
                    **errors("OAuthError"),
                },
            }
        },
        rfc8628.VERIFICATION_PATH: {
            "get": {
                "summary": "Where the person types a device flow's user code",
                "tags": ["oauth"],
                "parameters": [_query("user_code", "Pre-filled code.", _S)],
                "responses": {
                    "200": {"description": "A page", "content": {HTML: {"schema": _S}}},
                    "302": {"description": "To the login page"},
                    "400": {"description": "An error page", "content": {HTML: {"schema": _S}}},
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The database answers",
                "tags": ["server"],
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": _S}}},
                    "503": {"description": "Not", "content": {"text/plain": {"schema": _S}}},
                },
            }
        },
        "/livez": {
            "get": {
                "summary": "Liveness: the process answers",
                "tags": ["server"],
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": _S}}}
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: database, Redis, schema at head, not draining",
                "tags": ["server"],
                "responses": {
                    code: {
                        "description": "Each check's state",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                    for code in ("200", "503")
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (a bearer KEYFOB_METRICS_TOKEN)",
                "tags": ["server"],
                "responses": {
                    "200": {
                        "description": "The text format",
                        "content": {"text/plain": {"schema": _S}},
                    },
                    "401": {
                        "description": "A token is needed",
                        "content": {"text/plain": {"schema": _S}},
                    },
                    "404": {
                        "description": "Metrics are off",
                        "content": {"text/plain": {"schema": _S}},
                    },
                },
            }
        },
    }


def security_schemes() -> dict[str, Any]:
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token (`kfat_...`) from the token endpoint.",
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "The same access token, as the Anthropic SDKs send it.",
        },
    }


JSON_TYPES = (JSON,)
