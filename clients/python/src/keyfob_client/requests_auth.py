"""Auth for ``requests`` (an optional dependency, hence its own module)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests
import requests.auth

from keyfob_client.auth import _set

if TYPE_CHECKING:
    from keyfob_client.client import Keyfob


class KeyfobRequestsAuth(requests.auth.AuthBase):
    """The bearer token on every request, refreshed before expiry; the retry after a 401
    is done in a response hook (the pattern of requests' own digest auth)."""

    def __init__(self, keyfob: Keyfob) -> None:
        self.keyfob = keyfob

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        _set(r.headers, self.keyfob.access_token())
        r.register_hook("response", self._retry_after_401)
        return r

    def _retry_after_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401 or getattr(response.request, "_keyfob_retried", False):
            return response
        _ = response.content  # read and release the connection
        response.close()
        again = response.request.copy()
        _set(again.headers, self.keyfob.access_token(force_refresh=True))
        again._keyfob_retried = True  # type: ignore[attr-defined]
        retried: requests.Response = response.connection.send(again, **kwargs)
        retried.history.append(response)
        retried.request = again
        return retried
