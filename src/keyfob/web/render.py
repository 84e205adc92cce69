"""HTML rendering and the small helpers every page shares.

Autoescaping is on for every template, and every page carries headers that forbid
framing (a consent page inside someone else's frame is a clickjacking tool) and scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from keyfob.context import Keyfob
from keyfob.store.records import User
from keyfob.web import csrf

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

SECURITY_HEADERS = {
    # No form-action: the consent POST must be allowed to redirect to the app.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def kf_of(request: Request) -> Keyfob:
    kf: Keyfob = request.app.state.kf
    return kf


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    user = context.pop("user", None)
    html = _env.get_template(template).render(
        csrf_token=csrf.token(request.session), user=user, **context
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def error_page(
    request: Request, status: int, title: str, message: str, user: User | None = None
) -> HTMLResponse:
    return page(request, "error.html", status, title=title, message=message, user=user)


def redirect(url: str, status: int = 303) -> RedirectResponse:
    return RedirectResponse(url, status_code=status, headers={"Cache-Control": "no-store"})


async def current_user(request: Request) -> User | None:
    user_id = request.session.get("user_id")
    if not isinstance(user_id, str):
        return None
    return await kf_of(request).store.users.get(user_id)


def safe_next(value: str | None, default: str = "/") -> str:
    """Only same-site relative paths: "/x" yes; "//evil", "/\\evil", "http://" no."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)
        or len(value) > 4096
    ):
        return default
    return value


def login_redirect(request: Request, status: int = 303) -> RedirectResponse:
    from urllib.parse import urlencode

    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect("/login?" + urlencode({"next": safe_next(target)}), status)
