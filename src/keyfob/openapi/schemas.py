"""Reusable pieces of the OpenAPI document: error shapes, bodies, responses.

The gateway's request bodies are described as Keyfob validates them (the fields it
reads and checks), not as the whole OpenAI or Anthropic schema: anything else is passed
to the provider as is, so ``additionalProperties`` stays open. Responses are described
by what every answer carries, since a relayed answer is the provider's own.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
SSE = "text/event-stream"
FORM = "application/x-www-form-urlencoded"
HTML = "text/html"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


#: The cost headers of every metered answer (README: "What every gateway response tells
#: you"); all optional, since a refusal knows only some of them.
KEYFOB_HEADERS: dict[str, Any] = {
    name: {"description": text, "required": False, "schema": {"type": "string"}}
    for name, text in (
        ("x-keyfob-request-id", "The call's ledger entry."),
        ("x-keyfob-cost-usd", "Exact cost (a stream: the amount held until it ends)."),
        ("x-keyfob-reserved-usd", "The worst case reserved before the call went upstream."),
        ("x-keyfob-allowance-left-usd", "What is left in the tightest limit's window."),
        ("x-keyfob-allowance-resets-at", "When that window resets (ISO 8601, UTC)."),
    )
}
RETRY_HEADERS: dict[str, Any] = {
    "x-should-retry": {
        "description": "`false` when retrying soon cannot succeed (an exhausted allowance "
        "that resets later): the official SDKs then give up at once.",
        "required": False,
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "Retry-After": {
        "description": "Seconds to wait, only when retrying within a minute can succeed.",
        "required": False,
        "schema": {"type": "string"},
    },
}

SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "description": "OpenAI's error shape; the official SDKs raise their usual classes.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "AnthropicError": {
        "type": "object",
        "description": "Anthropic's error shape, on /v1/messages and count_tokens.",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "OAuthError": {
        "type": "object",
        "description": "RFC 6749 5.2 error response.",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "error_description": {"type": "string"},
        },
    },
    "Message": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string"},
            "content": {"type": ["string", "array", "null"]},
        },
    },
    "ChatRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "`provider/model`, a bare name or one of the person's aliases.",
            },
            "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "description": "The provider's answer, relayed (or translated to this shape).",
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string"},
            "choices": {"type": "array"},
            "usage": {"type": ["object", "null"]},
        },
    },
    "ResponsesRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "object"}},
                ]
            },
            "instructions": {"type": "string"},
            "stream": {"type": "boolean"},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "tools": {"type": "array"},
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "object", "status", "output"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "status": {"type": "string"},
            "output": {"type": "array"},
            "usage": {
                "type": ["object", "null"],
                "description": "Always set; `keyfob_estimated: true` when it is Keyfob's own "
                "count because the upstream reported none.",
            },
        },
    },
    "EmbeddingsRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "input": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "minItems": 1},
                ]
            },
        },
    },
    "Embeddings": {
        "type": "object",
        "required": ["data"],
        "properties": {"object": {"type": "string"}, "data": {"type": "array"}},
    },
    "MessagesRequest": {
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
            "max_tokens": {"type": "integer", "minimum": 1},
            "system": {"type": ["string", "array"]},
            "stream": {"type": "boolean"},
        },
    },
    "CountTokensRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
        },
    },
    "AnthropicMessage": {
        "type": "object",
        "required": ["type", "content"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "message"},
            "content": {"type": "array"},
            "usage": {"type": "object"},
        },
    },
    "TokenCount": {
        "type": "object",
        "required": ["input_tokens"],
        "properties": {"input_tokens": {"type": "integer", "minimum": 0}},
    },
    "ModelList": {
        "type": "object",
        "description": "OpenAI's list shape; Anthropic's (`has_more`, `first_id`...) when "
        "the request carries `anthropic-version`.",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": {"type": "object"}}},
    },
    "Limit": {
        "type": "object",
        "required": ["limit", "key", "cap_usd", "spent_usd", "held_usd", "left_usd"],
        "properties": {
            "limit": {"type": "string"},
            "key": {"type": "string"},
            "cap_usd": {"type": "string"},
            "spent_usd": {"type": "string"},
            "held_usd": {"type": "string"},
            "left_usd": {"type": "string"},
            "resets_at": {"type": ["string", "null"]},
        },
    },
    "Allowance": {
        "type": "object",
        "required": ["object", "grant_id", "models", "limits"],
        "properties": {
            "object": {"const": "keyfob.allowance"},
            "grant_id": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
            "limits": {"type": "array", "items": ref("Limit")},
            "expires_at": {
                "type": ["string", "null"],
                "description": "When the grant ends by itself (ISO 8601, UTC); null: never.",
            },
        },
    },
    "Quote": {
        "type": "object",
        "required": ["object", "model", "worst_case", "expected", "allowed", "limits"],
        "properties": {
            "object": {"const": "keyfob.quote"},
            "model": {"type": "string"},
            "price_source": {"type": "string"},
            "worst_case": {"type": "object"},
            "output_limit": {
                "type": "object",
                "description": "The per-choice output limit the call would be reserved "
                "for and sent; `lowered_from` when it would be fitted to what is left.",
                "properties": {
                    "max_tokens": {"type": "integer"},
                    "n": {"type": "integer"},
                    "lowered_from": {"type": ["integer", "null"]},
                },
            },
            "expected": {"type": "object"},
            "allowed": {"type": "boolean"},
            "refused_by": {"type": ["string", "null"]},
            "retry_at": {"type": ["string", "null"]},
            "limits": {"type": "array", "items": ref("Limit")},
        },
    },
    "Usage": {"type": "object", "description": "Usage grouped as asked (`by`)."},
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string", "pattern": "^kfat_"},
            "token_type": {"const": "Bearer"},
            "expires_in": {
                "type": "integer",
                "description": "Seconds; never past the grant's end when it has one.",
            },
            "refresh_token": {"type": "string", "pattern": "^kfrt_"},
            "scope": {"type": "string"},
        },
    },
    "DeviceAuthorization": {
        "type": "object",
        "required": [
            "device_code",
            "user_code",
            "verification_uri",
            "expires_in",
            "interval",
        ],
        "properties": {
            "device_code": {"type": "string"},
            "user_code": {"type": "string"},
            "verification_uri": {"type": "string"},
            "verification_uri_complete": {"type": "string"},
            "expires_in": {"type": "integer"},
            "interval": {
                "type": "integer",
                "description": "Seconds between polls of the token endpoint (5); a poll "
                "that comes sooner is answered `slow_down` and adds 5 seconds.",
            },
        },
    },
    "Introspection": {
        "type": "object",
        "required": ["active"],
        "properties": {"active": {"type": "boolean"}},
    },
    "ClientRegistration": {
        "type": "object",
        "required": ["client_id"],
        "properties": {
            "client_id": {"type": "string"},
            "redirect_uris": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["issuer", "authorization_endpoint", "token_endpoint"],
        "properties": {
            "issuer": {"type": "string"},
            "authorization_endpoint": {"type": "string"},
            "token_endpoint": {"type": "string"},
            "code_challenge_methods_supported": {"type": "array"},
        },
    },
    "ResourceMetadata": {
        "type": "object",
        "required": ["resource", "authorization_servers"],
        "properties": {
            "resource": {"type": "string"},
            "authorization_servers": {"type": "array", "items": {"type": "string"}},
        },
    },
}


def errors(schema: str, *, retry: bool = False) -> dict[str, Any]:
    """Every error status answers in one shape; ``default`` covers them all."""
    headers = {**KEYFOB_HEADERS, **(RETRY_HEADERS if retry else {})}
    return {
        "default": {
            "description": "An error (400 invalid, 401 token, 403 terms, 413 too large, "
            "429 allowance or rate limit, 502/504 upstream), in the surface's own shape.",
            "headers": headers,
            "content": json_content(ref(schema)),
        }
    }
