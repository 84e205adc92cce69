"""One error type for everything Keyfob answers, with what an app needs to react."""

from __future__ import annotations

from typing import Any

import httpx


class KeyfobError(Exception):
    """Keyfob refused (OAuth or gateway). ``should_retry`` is False when waiting cannot
    help (an allowance used up until its reset, in ``resets_at``): tell the person."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str | None = None,
        body: Any = None,
        should_retry: bool | None = None,
        retry_after_s: float | None = None,
        resets_at: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body
        self.should_retry = should_retry
        self.retry_after_s = retry_after_s
        self.resets_at = resets_at

    @classmethod
    def from_response(cls, response: httpx.Response) -> KeyfobError:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        data = body if isinstance(body, dict) else {}
        inner = data.get("error") if isinstance(data.get("error"), dict) else None
        if inner is not None:
            message = str(inner.get("message") or f"Keyfob answered {response.status_code}")
            code = inner.get("code") or inner.get("type")
        else:
            code = data.get("error") if isinstance(data.get("error"), str) else None
            message = str(data.get("error_description") or code or response.status_code)
        h = response.headers
        retry = h.get("x-should-retry")
        after = h.get("retry-after")
        return cls(
            message,
            status=response.status_code,
            code=code,
            body=body,
            should_retry=None if retry is None else retry == "true",
            retry_after_s=float(after) if after and after.replace(".", "", 1).isdigit() else None,
            resets_at=h.get("x-keyfob-allowance-resets-at"),
        )
