"""The page a person sees when a sign-in link cannot be trusted (an unknown app, a return
address the app never registered): it stays on Keyfob (never a redirect: RFC 9700), says
what happened in words, what to do next, and keeps the protocol's reason, quoted, for the
app's developer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest

from tests.oauth_app import InProcess, pkce

CALLBACK = "https://app.example/cb"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data") as kf:
        yield kf


def text_of(html: str) -> str:
    """The page's visible words, tags dropped and spaces collapsed."""
    body = html.split("<main", 1)[-1]
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.mark.parametrize("logged_in", [False, True])
def test_unknown_app_says_what_to_do(app: InProcess, logged_in: bool) -> None:
    if logged_in:
        app.logged_in()
    _, challenge = pkce()
    answer = app.client.get(app.authorize_url("no-such-app", CALLBACK, challenge))
    assert answer.status_code == 400 and "location" not in answer.headers
    words = text_of(answer.text)
    assert "<title>Keyfob does not know this app" in answer.text
    assert "Keyfob does not know this app" in words
    assert "not registered with this Keyfob: it may have been deleted" in words
    assert "Go back to the app and start signing in again from there" in words
    assert f"check that it uses this Keyfob's address ({app.url})" in words
    assert "tell the app's developer: “unknown client_id”" in words


def test_unregistered_return_address_is_refused_in_words(app: InProcess) -> None:
    cid, _ = app.register([CALLBACK], name="Story Writer")
    _, challenge = pkce()
    answer = app.client.get(app.authorize_url(cid, "https://evil.example/cb", challenge))
    assert answer.status_code == 400 and "location" not in answer.headers
    assert "evil.example" not in answer.text  # not even shown as a link to follow
    words = text_of(answer.text)
    assert "Keyfob will not send you back to that address" in words
    assert "an address this app never registered" in words and "nothing was shared" in words
    assert "Do not use this link again. Open the app yourself" in words
    assert "sign in from there" in words
    assert "“redirect_uri does not match any URI registered for this app”" in words
    # a registered address with its query changed is another address too
    other = app.client.get(app.authorize_url(cid, CALLBACK + "?next=/x", challenge))
    assert other.status_code == 400
    assert "Keyfob will not send you back" in text_of(other.text)


def test_other_untrusted_requests_keep_the_general_words(app: InProcess) -> None:
    cid, _ = app.register([CALLBACK])
    answer = app.client.get(f"/oauth/authorize?response_type=code&client_id={cid}")
    assert answer.status_code == 400
    words = text_of(answer.text)
    assert "This sign-in link does not work" in words
    assert "Go back to the app and try signing in again" in words
    assert "“redirect_uri is required”" in words
