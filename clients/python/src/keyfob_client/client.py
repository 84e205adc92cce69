"""``Keyfob``: one app's view of one person's Keyfob (issuer + client_id).

Signs in with the device flow (RFC 8628: for CLIs and anything without a browser of its
own), keeps tokens in a ``TokenCache``, refreshes them before they expire, and hands out
auth objects and SDK clients that always carry a valid token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from keyfob_client.cache import TokenCache, Tokens
from keyfob_client.errors import KeyfobError

if TYPE_CHECKING:
    # aliased: inside the class, ``openai`` and ``anthropic`` name the factory methods
    import anthropic as anthropic_sdk
    import openai as openai_sdk

    from keyfob_client.requests_auth import KeyfobRequestsAuth

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Refresh this long before expiry (clock skew, a slow network, a long request).
EXPIRY_MARGIN_S = 60.0
#: RFC 8628 3.5: on ``slow_down`` the interval grows by 5 seconds.
SLOW_DOWN_S = 5


@dataclass(frozen=True)
class DeviceCode:
    """What to show the person: go to ``verification_uri`` and type ``user_code``."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int

    def __repr__(self) -> str:
        return f"DeviceCode(user_code={self.user_code!r}, uri={self.verification_uri!r})"


def print_code(code: DeviceCode) -> None:
    """The default prompt: where to go and what to type."""
    where = code.verification_uri_complete or code.verification_uri
    print(f"To sign in, open {where}\nand enter the code {code.user_code}", flush=True)


class Keyfob:
    def __init__(
        self,
        issuer: str,
        client_id: str,
        *,
        cache: TokenCache | None = None,
        resource: str | None = "",
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.cache = cache if cache is not None else TokenCache()
        #: RFC 8707: tokens bound to the gateway (None leaves the parameter out).
        self.resource = f"{self.issuer}/v1" if resource == "" else resource
        self._http = http or httpx.Client(timeout=30)
        self._sleep = sleep
        self._key = f"{self.issuer} {self.client_id}"
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None

    def close(self) -> None:
        """Close the connections to Keyfob's OAuth endpoints (the tokens stay cached)."""
        self._http.close()

    def __enter__(self) -> Keyfob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """The gateway, for OpenAI-compatible clients."""
        return f"{self.issuer}/v1"

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata, fetched once."""
        if self._metadata is None:
            r = self._http.get(f"{self.issuer}/.well-known/oauth-authorization-server")
            if r.status_code != 200:
                raise KeyfobError.from_response(r)
            self._metadata = r.json()
        return self._metadata

    # --- signing in ------------------------------------------------------------------

    def start_device_flow(self, suggest: Mapping[str, str] | None = None) -> DeviceCode:
        """Ask for a device code. ``suggest`` pre-fills the consent page: ``cap_usd``,
        ``window`` (day, week, month), ``models`` (space-separated canonical ids)."""
        form = {"client_id": self.client_id}
        if self.resource:
            form["resource"] = self.resource
        for name, value in (suggest or {}).items():
            form[f"keyfob_{name}"] = str(value)
        r = self._http.post(self.metadata()["device_authorization_endpoint"], data=form)
        if r.status_code != 200:
            raise KeyfobError.from_response(r)
        d = r.json()
        return DeviceCode(
            d["device_code"],
            d["user_code"],
            d["verification_uri"],
            d.get("verification_uri_complete"),
            int(d["expires_in"]),
            int(d.get("interval", 5)),
        )

    def finish_device_flow(self, code: DeviceCode) -> Tokens:
        """Poll until the person decides (RFC 8628 3.4-3.5): wait ``interval`` seconds
        between polls, 5 more after each ``slow_down``; stop at ``expires_in``."""
        interval = max(1, code.interval)
        deadline = time.monotonic() + code.expires_in
        token_endpoint = self.metadata()["token_endpoint"]
        while True:
            self._sleep(interval)
            if time.monotonic() > deadline:
                raise KeyfobError("the code expired before it was approved", code="expired_token")
            r = self._http.post(
                token_endpoint,
                data={
                    "grant_type": DEVICE_GRANT,
                    "device_code": code.device_code,
                    "client_id": self.client_id,
                },
            )
            if r.status_code == 200:
                return self._store(r.json())
            error = KeyfobError.from_response(r)
            if error.code == "authorization_pending":
                continue
            if error.code == "slow_down":
                interval += SLOW_DOWN_S
                continue
            raise error  # access_denied, expired_token, invalid_client...

    def sign_in(
        self,
        *,
        on_code: Callable[[DeviceCode], None] = print_code,
        suggest: Mapping[str, str] | None = None,
        force: bool = False,
    ) -> Tokens:
        """The cached tokens if there are any (refreshed if needed), else the device flow:
        ``on_code`` shows the code (printed by default)."""
        if not force:
            cached = self.cache.get(self._key)
            if cached is not None:
                try:
                    self.access_token()
                    tokens = self.cache.get(self._key)
                    if tokens is not None:
                        return tokens
                except KeyfobError as exc:
                    if exc.status >= 500:
                        raise
        code = self.start_device_flow(suggest)
        on_code(code)
        return self.finish_device_flow(code)

    def _store(self, body: Mapping[str, Any]) -> Tokens:
        tokens = Tokens(
            access_token=str(body["access_token"]),
            refresh_token=body.get("refresh_token"),
            expires_at=time.time() + float(body.get("expires_in") or 3600),
            scope=str(body.get("scope") or ""),
        )
        self.cache.set(self._key, tokens)
        return tokens

    # --- tokens ------------------------------------------------------------------------

    def tokens(self) -> Tokens | None:
        return self.cache.get(self._key)

    def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token, refreshed first when it expires within a minute (or
        when ``force_refresh``: after a 401). One refresh at a time, across threads and,
        with a file cache, across processes."""
        tokens = self.cache.get(self._key)
        if tokens is None:
            raise KeyfobError("not signed in", status=401, code="not_signed_in")
        if not force_refresh and tokens.expires_at - EXPIRY_MARGIN_S > time.time():
            return tokens.access_token
        stale = tokens.access_token
        with self._lock, self.cache.locked():
            tokens = self.cache.get(self._key)  # another thread or process may have done it
            if tokens is None:
                raise KeyfobError("not signed in", status=401, code="not_signed_in")
            fresh = tokens.expires_at - EXPIRY_MARGIN_S > time.time()
            if fresh and (not force_refresh or tokens.access_token != stale):
                return tokens.access_token
            return self._refresh(tokens).access_token

    def _refresh(self, tokens: Tokens) -> Tokens:
        if not tokens.refresh_token:
            self.cache.set(self._key, None)
            raise KeyfobError("signed out: sign in again", status=401, code="not_signed_in")
        r = self._http.post(
            self.metadata()["token_endpoint"],
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens.refresh_token,
                "client_id": self.client_id,
            },
        )
        if r.status_code != 200:
            error = KeyfobError.from_response(r)
            if error.code in ("invalid_grant", "invalid_client"):
                self.cache.set(self._key, None)  # revoked, expired or replayed: sign in again
            raise error
        return self._store(r.json())

    def sign_out(self) -> None:
        """Revoke the refresh token (its whole family: every access token it produced
        stops too) and forget the tokens."""
        tokens = self.cache.get(self._key)
        self.cache.set(self._key, None)
        if tokens is None:
            return
        endpoint = self.metadata().get("revocation_endpoint")
        if not endpoint:
            return
        r = self._http.post(
            endpoint,
            data={
                "token": tokens.refresh_token or tokens.access_token,
                "token_type_hint": "refresh_token" if tokens.refresh_token else "access_token",
                "client_id": self.client_id,
            },
        )
        if r.status_code != 200:
            raise KeyfobError.from_response(r)

    # --- calling ----------------------------------------------------------------------

    def auth(self) -> httpx.Auth:
        """For ``httpx.Client(auth=...)`` and ``httpx.AsyncClient(auth=...)``."""
        from keyfob_client.auth import KeyfobAuth

        auth: httpx.Auth = KeyfobAuth(self)
        return auth

    def requests_auth(self) -> KeyfobRequestsAuth:
        """For ``requests.get(..., auth=...)`` or ``session.auth``."""
        from keyfob_client.requests_auth import KeyfobRequestsAuth

        return KeyfobRequestsAuth(self)

    def openai(self, **kwargs: Any) -> openai_sdk.OpenAI:
        """An ``openai.OpenAI`` on the gateway whose every request carries a fresh token."""
        import openai

        from keyfob_client.auth import auth_for_client

        http = openai.DefaultHttpxClient(auth=auth_for_client(openai.DefaultHttpxClient, self))
        # the api_key is a placeholder: the auth flow sets the real token on every request
        return openai.OpenAI(base_url=self.base_url, api_key="keyfob", http_client=http, **kwargs)

    def async_openai(self, **kwargs: Any) -> openai_sdk.AsyncOpenAI:
        import openai

        from keyfob_client.auth import auth_for_client

        cls = openai.DefaultAsyncHttpxClient
        http = cls(auth=auth_for_client(cls, self))
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key="keyfob", http_client=http, **kwargs
        )

    def anthropic(self, **kwargs: Any) -> anthropic_sdk.Anthropic:
        """An ``anthropic.Anthropic`` on Keyfob's ``/v1/messages``."""
        import anthropic

        from keyfob_client.auth import auth_for_client

        cls = anthropic.DefaultHttpxClient
        http = cls(auth=auth_for_client(cls, self))
        return anthropic.Anthropic(
            base_url=self.issuer, api_key="keyfob", http_client=http, **kwargs
        )

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._http.request(method, f"{self.issuer}{path}", auth=self.auth(), **kwargs)
        if r.status_code != 200:
            raise KeyfobError.from_response(r)
        return r.json()

    def quote(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Worst-case and expected cost of a chat-completions body, and whether it fits
        what is left now (and if not, which limit refuses it and until when)."""
        result: dict[str, Any] = self._api("POST", "/v1/keyfob/quote", json=dict(body))
        return result

    def allowance(self) -> dict[str, Any]:
        """Every limit of this app's allowance: cap, spent, held, left, reset time."""
        result: dict[str, Any] = self._api("GET", "/v1/keyfob/allowance")
        return result
