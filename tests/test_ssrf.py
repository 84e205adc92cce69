"""SSRF through Client ID Metadata Documents (issue 11): IPv6 forms that carry a private
IPv4 address, answered by DNS or written in the URL, and DNS rebinding between the check
and the connection. The resolver is injected: nothing here connects off loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from keyfob import addresses
from keyfob.oauth import client_metadata
from keyfob.oauth.client_metadata import MetadataDocumentError
from keyfob.settings import Settings

HOSTED = Settings(mode="hosted")
PERSONAL_LOOPBACK = Settings(client_metadata_allow_loopback=True)

#: Each form reaches a loopback, private, link-local or reserved IPv4 address.
SMUGGLED = [
    "::127.0.0.1",  # IPv4-compatible
    "::7f00:1",
    "::10.0.0.1",
    "::169.254.169.254",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:0:a00:1",
    "64:ff9b::7f00:1",  # NAT64
    "64:ff9b::127.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4
    "2002:a00:1::",
    "2002:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "fec0::1",  # site-local
    "::",
    "::1",
    "0.0.0.0",
    "100.64.0.1",
    "198.18.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "fe80::1%eth0",
    "[::127.0.0.1]",
]
PUBLIC = ["93.184.215.14", "2606:4700::6810:84e5", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1"]


@pytest.mark.parametrize("address", SMUGGLED)
def test_smuggled_forms_refused(address: str) -> None:
    assert not client_metadata.address_allowed(address, HOSTED)
    assert not addresses.is_public(addresses.parse(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_forms_allowed(address: str) -> None:
    assert client_metadata.address_allowed(address, HOSTED)


def test_embedded_address_is_what_is_judged() -> None:
    assert str(addresses.effective(addresses.parse("64:ff9b::7f00:1"))) == "127.0.0.1"
    assert str(addresses.effective(addresses.parse("2002:7f00:1::1"))) == "127.0.0.1"
    assert str(addresses.effective(addresses.parse("::127.0.0.1"))) == "127.0.0.1"
    assert str(addresses.effective(addresses.parse("::1"))) == "::1"
    # personal mode may allow loopback, in every form, and still nothing private
    assert client_metadata.address_allowed("::ffff:127.0.0.1", PERSONAL_LOOPBACK)
    assert client_metadata.address_allowed("64:ff9b::7f00:1", PERSONAL_LOOPBACK)
    assert not client_metadata.address_allowed("64:ff9b::a00:1", PERSONAL_LOOPBACK)


class Resolver:
    """Answers from a script, one answer per call, and counts the calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[tuple[int, str]]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, a.split("%")[0]) for a in answer]


@pytest.mark.parametrize("address", SMUGGLED)
def test_dns_answer_with_a_smuggled_form_refused_before_connecting(address: str) -> None:
    resolve = Resolver([address.strip("[]")])
    with pytest.raises(MetadataDocumentError, match="private or loopback"):
        asyncio.run(client_metadata.fetch_document("https://evil.example/c.json", HOSTED, resolve))
    assert resolve.calls == 1


def test_one_bad_address_among_good_ones_refuses() -> None:
    resolve = Resolver(["93.184.215.14", "64:ff9b::a9fe:a9fe"])
    with pytest.raises(MetadataDocumentError, match="private or loopback"):
        asyncio.run(client_metadata.fetch_document("https://mixed.example/c.json", HOSTED, resolve))


@pytest.mark.parametrize(
    "literal", ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "[::ffff:a9fe:a9fe]"]
)
def test_smuggled_literal_in_the_url_refused(literal: str) -> None:
    resolve = Resolver(["93.184.215.14"])  # never asked: a literal is its own answer
    with pytest.raises(MetadataDocumentError, match="private or loopback"):
        asyncio.run(client_metadata.fetch_document(f"https://{literal}/c.json", HOSTED, resolve))
    assert resolve.calls == 0


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A loopback TCP listener that records who connected (and then hangs up)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join(5)
    server.close()


def test_connection_goes_to_the_checked_address(listener: tuple[int, list[str]]) -> None:
    """DNS rebinding: the first answer is checked, later answers would point elsewhere.
    The fetch must resolve once and connect to exactly the checked address."""
    port, seen = listener
    resolve = Resolver(["127.0.0.1"], ["10.0.0.1"], ["169.254.169.254"])
    with pytest.raises(MetadataDocumentError, match="could not be fetched"):
        asyncio.run(
            client_metadata.fetch_document(
                f"https://rebind.example:{port}/c.json", PERSONAL_LOOPBACK, resolve
            )
        )
    assert resolve.calls == 1
    assert seen == ["127.0.0.1"]


def test_mapped_answer_connects_to_the_ipv4_it_stands_for(
    listener: tuple[int, list[str]],
) -> None:
    port, seen = listener
    resolve = Resolver(["::ffff:127.0.0.1"])
    with pytest.raises(MetadataDocumentError, match="could not be fetched"):
        asyncio.run(
            client_metadata.fetch_document(
                f"https://mapped.example:{port}/c.json", PERSONAL_LOOPBACK, resolve
            )
        )
    assert seen == ["127.0.0.1"]


@pytest.mark.parametrize("literal", ["[::127.0.0.1]", "[64:ff9b::a00:1]", "[2002:a9fe:a9fe::1]"])
def test_hosted_linking_refuses_smuggled_upstreams(literal: str) -> None:
    from keyfob.providers.linking import LinkRefused, normalise_base_url

    with pytest.raises(LinkRefused, match="private"):
        asyncio.run(normalise_base_url(f"https://{literal}/v1", hosted=True))
