"""A linked provider's page: an edit that changes the address or the key is tried against
the provider first (a dead address or a key the provider refuses is caught in words by
its field, with an explicit "save anyway"), and "Test the connection" names the models
the provider offers. The provider is a real HTTP server that checks its key."""

from __future__ import annotations

from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from keyfob.providers.linking import decrypt_key
from keyfob.store.records import Provider
from keyfob.web.provider_pages import answered
from tests.fake_upstream import KEYED_KEY, KEYED_MODELS, FakeUpstream
from tests.gateway_inproc import link
from tests.oauth_app import InProcess, hidden
from tests.support import free_port

FAKE_KEY = "sk-fake-" + "e" * 32


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def app(tmp_path: Path, up: FakeUpstream) -> Iterator[InProcess]:
    with InProcess(tmp_path / "data") as kf:
        link(kf, "keyed", up.url("keyed/v1"), models=["gpt-4o-mini"], api_key=KEYED_KEY)
        kf.logged_in()
        yield kf


def keyed(app: InProcess) -> Provider:
    provider = app.run(app.store.providers.by_name, app.owner.id, "keyed")
    assert provider is not None
    return provider


def stored_key(app: InProcess) -> str | None:
    return app.run(decrypt_key, app.app.state.kf, keyed(app))


def edit(app: InProcess, **data: str) -> Any:
    provider = keyed(app)
    page = app.client.get(f"/providers/{provider.id}")
    form = {
        "csrf_token": hidden(page.text, "csrf_token"),
        "base_url": provider.base_url,
        "api_key": "",
        "models": ", ".join(provider.models),
        **data,
    }
    return app.client.post(f"/providers/{provider.id}", data=form)


def shown_after(app: InProcess, answer: Any) -> str:
    """The page the person lands on after a redirect, with its messages, as plain text."""
    assert answer.status_code == 303, answer.text[:2000]
    return unescape(app.client.get(answer.headers["location"]).text)


def probes(up: FakeUpstream) -> int:
    return sum(1 for s in up.seen if s.name == "keyed")


def test_the_connection_test_names_the_models_or_says_what_failed(
    app: InProcess, up: FakeUpstream
) -> None:
    provider = keyed(app)
    page = app.client.get(f"/providers/{provider.id}")
    tested = app.client.post(
        f"/providers/{provider.id}/test", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    first = sorted(KEYED_MODELS)[:5]
    text = shown_after(app, tested)
    assert (
        f"keyed answered and lists {len(KEYED_MODELS)} models, among them "
        f"{', '.join(first[:4])} and {first[4]}." in text
    )
    assert up.seen[-1].headers["Authorization"] == f"Bearer {KEYED_KEY}"  # the stored key
    # the same button on a provider whose key it refuses: the failure in words
    app.run(app.store.providers.set_credential, provider.id, None)
    failed = app.client.post(
        f"/providers/{provider.id}/test", data={"csrf_token": hidden(page.text, "csrf_token")}
    )
    text = shown_after(app, failed)
    assert "Connection test failed: the provider refused the API key (HTTP 401)" in text
    assert "check the key" in text


def test_edit_refuses_a_key_the_provider_refuses_unless_saved_anyway(
    app: InProcess, up: FakeUpstream
) -> None:
    refused = edit(app, api_key=FAKE_KEY)
    assert refused.status_code == 400
    assert 'id="api_key-error"' in refused.text and 'aria-invalid="true"' in refused.text
    error = refused.text.split('id="api_key-error">')[1].split("<")[0]
    assert "the provider refused the API key (HTTP 401)" in unescape(error)
    assert "Nothing was saved" in refused.text
    assert FAKE_KEY not in refused.text and KEYED_KEY not in refused.text
    assert 'name="save_anyway"' in refused.text and "type it again" in refused.text
    assert stored_key(app) == KEYED_KEY
    anyway = edit(app, api_key=FAKE_KEY, save_anyway="1")
    assert "Saved keyed without a connection test" in shown_after(app, anyway)
    assert stored_key(app) == FAKE_KEY
    # the right key again: tested, passes, and the message names the models
    fixed = edit(app, api_key=KEYED_KEY)
    assert f"Saved keyed; it answered and lists {len(KEYED_MODELS)} models" in shown_after(
        app, fixed
    )
    assert stored_key(app) == KEYED_KEY
    # nothing about the connection changed: no test is sent
    before = probes(up)
    assert edit(app, models="gpt-4o-mini, gpt-4o").status_code == 303
    assert probes(up) == before and set(keyed(app).models) == {"gpt-4o-mini", "gpt-4o"}


def test_edit_refuses_a_dead_address_unless_saved_anyway(app: InProcess) -> None:
    address = keyed(app).base_url
    dead = f"http://127.0.0.1:{free_port()}/v1"
    refused = edit(app, base_url=dead)
    assert refused.status_code == 400 and 'id="base_url-error"' in refused.text
    assert "nothing answers at 127.0.0.1:" in unescape(refused.text)
    assert "is the server running" in unescape(refused.text)
    assert f'value="{dead}"' in refused.text  # what was typed stays in the form
    assert "type it again" not in refused.text  # no key was typed
    assert keyed(app).base_url == address
    # the key is deleted along with the move: tested without a key, refused by its field
    no_key = edit(app, remove_key="1")
    assert no_key.status_code == 400 and 'id="api_key-error"' in no_key.text
    assert stored_key(app) == KEYED_KEY
    anyway = edit(app, base_url=dead, save_anyway="1")
    assert "without a connection test" in shown_after(app, anyway)
    assert keyed(app).base_url == dead


def test_found_models_in_words() -> None:
    assert answered([]) == "answered, but lists no models; type the model names yourself."
    assert answered(["a"]) == "answered and lists 1 model: a."
    assert answered(["a", "b", "c"]) == "answered and lists 3 models: a, b and c."
    many = [f"m{i}" for i in range(40)]
    assert answered(many) == "answered and lists 40 models, among them m0, m1, m2, m3 and m4."
