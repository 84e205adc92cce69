"""HTML rendering and the small helpers every page shares.

Autoescaping is on for every template, and every page carries headers that forbid
framing (a consent page inside someone else's frame is a clickjacking tool) and scripts.
A message after every action: handlers ``flash`` it into the session before redirecting,
and the next page shows it once (post/redirect/get, so a reload never repeats a POST).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from keyfob.allowance.windows import zone
from keyfob.context import Keyfob
from keyfob.money import usd_input, usd_precise, usd_summary
from keyfob.store.records import User
from keyfob.web import csrf

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def local_time(ts: float | None, timezone: str = "UTC", fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An epoch time on the person's own clock ("" for none)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).astimezone(zone(timezone)).strftime(fmt)


_env.filters["usd"] = usd_summary
_env.filters["usd_precise"] = usd_precise
_env.filters["usd_input"] = usd_input
_env.filters["local_time"] = local_time

SECURITY_HEADERS = {
    # No form-action: the consent POST must be allowed to redirect to the app.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_FLASH = "flash"


def kf_of(request: Request) -> Keyfob:
    kf: Keyfob = request.app.state.kf
    return kf


def flash(request: Request, text: str, kind: str = "ok") -> None:
    """A message for the next page the person sees ("Saved.", "Revoked X.")."""
    messages = list(request.session.get(_FLASH) or [])[-4:]
    messages.append({"text": text[:500], "kind": "error" if kind == "error" else "ok"})
    request.session[_FLASH] = messages


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    user = context.pop("user", None)
    flashes = request.session.pop(_FLASH, None) if "session" in request.scope else None
    html = _env.get_template(template).render(
        csrf_token=csrf.token(request.session) if "session" in request.scope else "",
        user=user,
        flashes=flashes if isinstance(flashes, list) else [],
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def error_page(
    request: Request,
    status: int,
    title: str,
    message: str,
    user: User | None = None,
    *,
    next_step: str | None = None,
) -> HTMLResponse:
    """An error that says what happened and what to do next."""
    return page(
        request,
        "error.html",
        status,
        title=title,
        message=message,
        next_step=next_step,
        user=user,
    )


def redirect(url: str, status: int = 303) -> RedirectResponse:
    return RedirectResponse(url, status_code=status, headers={"Cache-Control": "no-store"})


async def current_user(request: Request) -> User | None:
    """The signed-in person: a live server-side session (``web/sessions.py``)."""
    from keyfob.web.sessions import current_user as session_user

    return await session_user(request)


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
