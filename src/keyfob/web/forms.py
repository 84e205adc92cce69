"""Reading HTML form posts with a size limit, strict decoding and a CSRF check."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request

from keyfob.limits import BodyTooLarge, read_limited
from keyfob.web import csrf

MAX_FIELDS = 200


class FormError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Form:
    """Parsed form fields; ``get`` gives the first value, ``all`` every value."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def get(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))


async def read_form(request: Request, limit: int, *, check_csrf: bool = True) -> Form:
    """Read an ``application/x-www-form-urlencoded`` body; raises FormError."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise FormError(415, "forms must be sent as application/x-www-form-urlencoded")
    try:
        body = await read_limited(request, limit)
    except BodyTooLarge:
        raise FormError(413, "the form is too large") from None
    try:
        fields = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "the form could not be read") from None
    form = Form(fields)
    if check_csrf and not csrf.valid(request.session, form.get(csrf.FIELD)):
        raise FormError(
            403,
            "the form expired or did not come from this site; "
            "go back, reload the page and try again",
        )
    return form
