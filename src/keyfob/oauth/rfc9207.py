"""Issuer identification in authorization responses (RFC 9207).

A client talking to several authorization servers checks ``iss`` to detect mix-up
attacks; we add it to every redirect back to the client, success and error alike.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def redirect_with(redirect_uri: str, params: dict[str, str | None], issuer: str) -> str:
    """``redirect_uri`` with ``params`` and ``iss`` added to its query (RFC 6749 4.1.2).

    Query parameters already in the registered URI are kept, as the RFC requires.
    """
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    query.append(("iss", issuer))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
