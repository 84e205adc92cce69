"""The pages' side of server-side sessions (``accounts/sessions.py``): the cookie holds
the session id, these helpers start, read and end sessions for a request.

API for pages (the settings page uses it too):

- ``await sign_in(request, user)``: a new session (new id; the previous one of this
  browser ends), everything else in the cookie is dropped (no fixation);
- ``await current_user(request)``: the signed-in person or None (idle/absolute expiry);
- ``await sign_out(request)``: this session ends, the cookie is emptied;
- ``await sign_out_everywhere(request, user)``: every session of the person ends;
- ``hash_limiter(request)``: the server's bound on concurrent password hashes.
"""

from __future__ import annotations

from starlette.requests import Request

from keyfob.accounts import sessions
from keyfob.accounts.hashing import HashLimiter
from keyfob.context import Keyfob
from keyfob.store.records import User

KEY = "sid"
#: How long a flow the person started in this browser stays pending in the session: a
#: sign-in request awaiting consent (``oauth/routes.py``), an OpenRouter link
#: (``web/openrouter.py``). One value, so the person has the same time for either.
PENDING_TTL_S = 15 * 60
_CACHE = "kf_user"


def _kf(request: Request) -> Keyfob:
    kf: Keyfob = request.app.state.kf
    return kf


def rules(request: Request) -> sessions.SessionRules:
    s = _kf(request).settings
    return sessions.SessionRules(idle_s=s.session_idle_s, max_s=s.session_max_s)


def hash_limiter(request: Request) -> HashLimiter:
    found = getattr(request.app.state, "kf_hash_limiter", None)
    if not isinstance(found, HashLimiter):
        s = _kf(request).settings
        found = HashLimiter(s.concurrent_password_hashes, s.login_queue_max)
        request.app.state.kf_hash_limiter = found
    return found


def _session_id(request: Request) -> str | None:
    value = request.session.get(KEY)
    return value if isinstance(value, str) else None


async def sign_in(request: Request, user: User) -> None:
    """Start a fresh session: a new id, nothing from before the login survives."""
    store = _kf(request).store
    old = _session_id(request)
    if old:
        await sessions.end(store, old)
    request.session.clear()
    request.session[KEY] = await sessions.start(store, user)
    request.state.kf_user = user


async def current_user(request: Request) -> User | None:
    """The person this request's live session belongs to (looked up once per request)."""
    if hasattr(request.state, _CACHE):
        cached = getattr(request.state, _CACHE)
        return cached if isinstance(cached, User) else None
    session_id = _session_id(request)
    user = None
    if session_id:
        user = await sessions.resolve(_kf(request).store, session_id, rules(request))
        if user is None:
            request.session.pop(KEY, None)  # ended or expired: the cookie forgets it
    setattr(request.state, _CACHE, user)
    return user


async def sign_out(request: Request) -> None:
    session_id = _session_id(request)
    if session_id:
        await sessions.end(_kf(request).store, session_id)
    request.session.clear()
    request.state.kf_user = None


async def sign_out_everywhere(request: Request, user: User) -> int:
    """Every session of ``user`` ends, this one included; returns how many ended."""
    ended = await sessions.end_all(_kf(request).store, user.id)
    request.session.clear()
    request.state.kf_user = None
    return ended
