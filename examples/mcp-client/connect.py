"""Connect to a Keyfob gateway the way an MCP client does, knowing nothing but its URL.

    python examples/mcp-client/connect.py http://127.0.0.1:8787/v1

1. Call the resource without a token: the 401's ``WWW-Authenticate`` names the protected
   resource metadata (RFC 9728).
2. That document names the authorization server; its metadata (RFC 8414) names the
   endpoints and says PKCE S256 is supported.
3. Register as a public client (RFC 7591) with a loopback redirect URI (RFC 8252).
4. Authorization code + PKCE with ``resource`` (RFC 8707), the answer's ``state`` and
   ``iss`` (RFC 9207) checked, on a one-off listener on 127.0.0.1.
5. Call the resource with the token.

Standard library and httpx only, so each step is visible.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import sys
import threading
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx


class ConnectError(Exception):
    """A step of discovery or sign-in failed; the message says which."""


@dataclass
class Connection:
    resource: str
    issuer: str
    client_id: str
    token: dict[str, Any]

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token['access_token']}"}
        return httpx.Client(base_url=self.resource.rstrip("/") + "/", headers=headers)


def discover(http: httpx.Client, resource: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Steps 1-2: the resource's metadata and its authorization server's."""
    probe = http.get(resource.rstrip("/") + "/models")
    if probe.status_code != 401:
        raise ConnectError(f"expected a 401 challenge, got {probe.status_code}")
    m = re.search(r'resource_metadata="([^"]+)"', probe.headers.get("www-authenticate", ""))
    if not m:
        raise ConnectError("the 401 names no resource_metadata (RFC 9728)")
    prm = http.get(m.group(1)).json()
    if prm.get("resource") != resource.rstrip("/"):
        raise ConnectError(f"metadata is for {prm.get('resource')!r}, not {resource!r}")
    issuer = prm["authorization_servers"][0]
    asm = http.get(issuer.rstrip("/") + "/.well-known/oauth-authorization-server").json()
    if asm.get("issuer") != issuer:
        raise ConnectError("the authorization server's metadata names another issuer")
    if "S256" not in asm.get("code_challenge_methods_supported", []):
        raise ConnectError("the authorization server does not support PKCE S256")
    return prm, asm


class _Callback(BaseHTTPRequestHandler):
    query: dict[str, str] = {}
    done = threading.Event()

    def do_GET(self) -> None:
        type(self).query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"Signed in. You can close this window.")
        type(self).done.set()

    def log_message(self, *args: object) -> None:
        pass


def connect(
    resource: str,
    *,
    client_name: str = "MCP-style example client",
    open_browser: Callable[[str], object] = webbrowser.open,
    timeout_s: float = 300,
) -> Connection:
    with httpx.Client(timeout=30) as http:
        prm, asm = discover(http, resource)
        listener = HTTPServer(
            ("127.0.0.1", 0), type("Cb", (_Callback,), {"done": threading.Event()})
        )
        redirect_uri = f"http://127.0.0.1:{listener.server_port}/callback"
        registered = http.post(
            asm["registration_endpoint"],
            json={
                "client_name": client_name,
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            },
        )
        if registered.status_code != 201:
            raise ConnectError(f"registration refused: {registered.text}")
        client_id = registered.json()["client_id"]

        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        state = secrets.token_urlsafe(16)
        url = (
            asm["authorization_endpoint"]
            + "?"
            + urlencode(
                {
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": redirect_uri,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "state": state,
                    "resource": prm["resource"],
                }
            )
        )
        handler: Any = listener.RequestHandlerClass
        thread = threading.Thread(target=listener.serve_forever, daemon=True)
        thread.start()
        try:
            open_browser(url)
            if not handler.done.wait(timeout_s):
                raise ConnectError("no answer from the browser in time")
        finally:
            listener.shutdown()
            listener.server_close()
        answer = handler.query
        if answer.get("state") != state:
            raise ConnectError("the answer's state does not match (CSRF?)")
        if answer.get("iss") != asm["issuer"]:
            raise ConnectError("the answer came from another authorization server (RFC 9207)")
        if "error" in answer:
            raise ConnectError(f"authorization refused: {answer['error']}")
        token = http.post(
            asm["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": client_id,
                "resource": prm["resource"],
            },
        )
        if token.status_code != 200:
            raise ConnectError(f"token request refused: {token.text}")
        return Connection(prm["resource"], asm["issuer"], client_id, token.json())


def main() -> None:
    resource = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8787/v1"
    conn = connect(resource, open_browser=lambda url: print(f"Open: {url}") or webbrowser.open(url))
    with conn.client() as client:
        models = client.get("models").json()["data"]
    print("Connected. Models you may use:", ", ".join(m["id"] for m in models))


if __name__ == "__main__":
    main()
