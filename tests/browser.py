"""A form-posting "browser" over requests: enough HTML parsing to log in and consent
the way a person's browser would (hidden fields, CSRF token, checked boxes, the button)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # name -> input type


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
            return
        if not self.forms:
            return
        form = self.forms[-1]
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text").lower()
            form.names[name] = kind
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    form.fields.append((name, a.get("value", "on")))
            elif kind == "submit":
                form.buttons.append((name, a.get("value", "")))
            else:
                form.fields.append((name, a.get("value", "")))
        elif tag == "button" and name:
            form.buttons.append((name, a.get("value", "")))
        elif tag in ("select", "textarea") and name:
            form.names[name] = tag


def forms(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def post_form(
    session: requests.Session,
    page: requests.Response,
    *,
    fill: dict[str, str] | None = None,
    button: str | None = None,
    allow_redirects: bool = False,
) -> requests.Response:
    """Submit the page's first POST form (not the menu's "Log out"), filling fields whose
    name contains a key of ``fill`` and pressing the button whose value (or name) contains
    ``button``."""
    candidates = [f for f in forms(page.text) if f.method == "post" and f.action != "/logout"]
    assert candidates, f"no POST form on {page.url}:\n{page.text[:2000]}"
    form = candidates[0]
    data = list(form.fields)
    for key, value in (fill or {}).items():
        matched = [n for n in form.names if key in n.lower()]
        assert matched, f"no field like {key!r} in {sorted(form.names)}"
        data = [(n, v) for n, v in data if n not in matched]
        data.append((matched[0], value))
    if button is not None:
        pressed = [b for b in form.buttons if button in b[1].lower() or button in b[0].lower()]
        assert pressed, f"no button like {button!r} in {form.buttons}"
        data.append(pressed[0])
    return session.post(
        urljoin(page.url, form.action or page.url),
        data=data,
        allow_redirects=allow_redirects,
        timeout=30,
    )
