"""A server-side web app (Starlette + Authlib) where each visitor signs in with their own
Keyfob account and chats on it. A confidential client: its secret and every visitor's
tokens stay on the server (the browser holds only a session id), so nothing here needs
CORS.

    keyfob apps add "Chat server" --confidential --redirect-uri http://127.0.0.1:8000/callback
    KEYFOB_CLIENT_SECRET=kfcs_... python examples/server-app/app.py \\
        --keyfob http://127.0.0.1:8787 --client-id kfapp_... --port 8000
"""

from __future__ import annotations

import argparse
import html
import os
import secrets
import time
from typing import Any

import openai
import uvicorn
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

#: Refresh this long before the access token expires.
MARGIN_S = 60


def create_app(issuer: str, client_id: str, client_secret: str) -> Starlette:
    issuer = issuer.rstrip("/")
    oauth = OAuth()
    oauth.register(
        "keyfob",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=f"{issuer}/.well-known/oauth-authorization-server",
        client_kwargs={"code_challenge_method": "S256"},  # PKCE, also for confidential apps
    )
    #: Visitors' tokens, by a random id kept in their (signed) session cookie. A real
    #: app keeps them in its database, encrypted.
    tokens: dict[str, dict[str, Any]] = {}

    def page(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Chat server</title>"
            f"</head><body><main>{body}</main></body></html>",
            status_code=status,
        )

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(16)
        return str(token)

    async def fresh_token(request: Request) -> dict[str, Any] | None:
        uid = request.session.get("uid")
        token = tokens.get(uid) if isinstance(uid, str) else None
        if token is None or token["expires_at"] - MARGIN_S > time.time():
            return token
        meta = await oauth.keyfob.load_server_metadata()
        async with AsyncOAuth2Client(client_id, client_secret, token=token) as client:
            new = await client.refresh_token(
                meta["token_endpoint"], refresh_token=token["refresh_token"]
            )
        tokens[str(uid)] = dict(new)
        return tokens[str(uid)]

    async def home(request: Request) -> Response:
        token = await fresh_token(request)
        if token is None:
            return page('<h1>Chat server</h1><p><a href="/login">Sign in with Keyfob</a></p>')
        return page(
            "<h1>Chat server</h1><p id=state>Signed in</p>"
            '<form method=post action="/ask">'
            f'<input type=hidden name=csrf value="{csrf(request)}">'
            "<label for=prompt>Message</label> <input id=prompt name=prompt required>"
            " <button>Ask</button></form>"
            '<form method=post action="/logout">'
            f'<input type=hidden name=csrf value="{csrf(request)}"><button>Sign out</button></form>'
        )

    async def login(request: Request) -> Response:
        redirect_uri = str(request.url_for("callback"))
        # suggest an allowance: the person sees it on Keyfob's consent page and decides
        response: Response = await oauth.keyfob.authorize_redirect(
            request, redirect_uri, keyfob_cap_usd="0.50", keyfob_window="month"
        )
        return response

    async def callback(request: Request) -> Response:
        try:
            token = await oauth.keyfob.authorize_access_token(request)
        except OAuthError as exc:
            return page(f"<p>Sign-in failed: {html.escape(exc.error)}</p>", 400)
        if request.query_params.get("iss") != issuer:  # RFC 9207: the answer is Keyfob's
            return page("<p>Sign-in answered by another server.</p>", 400)
        uid = secrets.token_urlsafe(16)
        tokens[uid] = dict(token)
        request.session["uid"] = uid
        return RedirectResponse("/", status_code=303)

    async def ask(request: Request) -> Response:
        form = await request.form()
        if not secrets.compare_digest(str(form.get("csrf", "")), csrf(request)):
            return page("<p>Stale form: reload the page.</p>", 403)
        try:
            token = await fresh_token(request)
        except OAuthError:
            token = None  # the grant was revoked or expired: sign in again
        if token is None:
            return RedirectResponse("/", status_code=303)
        client = openai.AsyncOpenAI(
            base_url=f"{issuer}/v1", api_key=token["access_token"], max_retries=1
        )
        try:
            models = await client.models.list()
            raw = await client.chat.completions.with_raw_response.create(
                model=models.data[0].id,
                messages=[{"role": "user", "content": str(form.get("prompt", ""))}],
                max_tokens=200,
            )
        except openai.RateLimitError as exc:
            resets = exc.response.headers.get("x-keyfob-allowance-resets-at", "its reset")
            return page(f"<p>Your allowance for this app is used up until {resets}.</p>", 429)
        except openai.AuthenticationError:
            tokens.pop(str(request.session.get("uid")), None)
            return page('<p>Access was revoked. <a href="/login">Sign in again</a></p>', 401)
        finally:
            await client.close()
        answer = raw.parse().choices[0].message.content or ""
        return page(
            f"<p id=answer>{html.escape(answer)}</p>"
            f"<p id=cost>Cost ${html.escape(raw.headers.get('x-keyfob-cost-usd', '?'))}, "
            f"${html.escape(raw.headers.get('x-keyfob-allowance-left-usd', '?'))} left</p>"
            '<p><a href="/">Ask again</a></p>'
        )

    async def logout(request: Request) -> Response:
        form = await request.form()
        uid = request.session.pop("uid", None)
        token = tokens.pop(str(uid), None)
        if token and secrets.compare_digest(str(form.get("csrf", "")), csrf(request)):
            meta = await oauth.keyfob.load_server_metadata()
            async with AsyncOAuth2Client(client_id, client_secret) as client:
                await client.revoke_token(meta["revocation_endpoint"], token=token["refresh_token"])
        return RedirectResponse("/", status_code=303)

    return Starlette(
        routes=[
            Route("/", home),
            Route("/login", login),
            Route("/callback", callback, name="callback"),
            Route("/ask", ask, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=os.environ.get("SESSION_SECRET") or secrets.token_urlsafe(32),
                session_cookie="chat_server_session",  # not Keyfob's: cookies ignore ports
                same_site="lax",
            )
        ],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="A server-side web app signing in with Keyfob")
    ap.add_argument("--keyfob", default="http://127.0.0.1:8787")
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    secret = os.environ.get("KEYFOB_CLIENT_SECRET")
    if not secret:
        raise SystemExit("set KEYFOB_CLIENT_SECRET (printed once by `keyfob apps add`)")
    app = create_app(args.keyfob, args.client_id, secret)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
