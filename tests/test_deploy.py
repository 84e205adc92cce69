"""Deploying hosted mode: ``keyfob migrate``, the connection budget, the one-time setup
link across processes (with the shared session key ring), and master-key rotation while
serving. Real PostgreSQL, real ``keyfob serve`` processes, fakellm upstream."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyfob.settings import Settings
from keyfob.store import Store
from keyfob.store.migrate import head
from keyfob.vault import Vault, key_id_of
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.hosted import Deployment, HostedProcess, fresh_database, new_master_key
from tests.oauth_app import hidden
from tests.support import FakeLLM, free_port, grant_token

PASSWORD = OWNER_PASSWORD


def test_migrate_takes_a_plain_url_and_says_where_the_schema_stands(tmp_path: Path) -> None:
    with fresh_database() as url:
        d = Deployment(url, "https://keys.example.org")
        first = d.cli(tmp_path, "migrate")
        assert f"revision {head()} (head" in first, first
        again = d.cli(tmp_path, "migrate")
        assert f"revision {head()} (head" in again and "Traceback" not in again


def test_a_database_that_cannot_be_reached_is_refused_in_words(tmp_path: Path) -> None:
    d = Deployment(f"postgresql://kf:hunter2@127.0.0.1:{free_port()}/nowhere", "https://k.test")
    shown = d.cli(tmp_path, "migrate", check=False)
    assert "cannot reach the database" in shown and "Traceback" not in shown
    assert "hunter2" not in shown  # the password is never shown


def test_pools_larger_than_the_budget_refuse_to_start(tmp_path: Path) -> None:
    with fresh_database() as url:
        d = Deployment(url, "https://keys.example.org")
        proc = HostedProcess(
            d,
            tmp_path / "a",
            more={"KEYFOB_DB_PROCESSES": "4", "KEYFOB_DB_CONNECTION_BUDGET": "30"},
        ).launch()
        assert proc.exit_code() == 1
        log = proc.log()
        assert "4 process(es) x (5 pool + 5 overflow + 5 metering) + 2 spare = 62" in log, log
        assert "Traceback" not in log
        # against the server's own max_connections when no budget is given
        big = HostedProcess(d, tmp_path / "b", more={"KEYFOB_DB_PROCESSES": "1000"}).launch()
        assert big.exit_code() == 1
        assert "max_connections" in big.log()


def _setup_page(client: httpx.Client, url: str) -> httpx.Response:
    return client.get(url, follow_redirects=True)


def test_the_setup_link_works_on_any_process_and_only_once(tmp_path: Path) -> None:
    with fresh_database() as url:
        port_a = free_port()
        d = Deployment(url, f"http://127.0.0.1:{port_a}")
        d.extra["KEYFOB_ALLOWED_HOSTS"] = "127.0.0.1"
        a = HostedProcess(d, tmp_path / "a", port=port_a).launch()
        b = HostedProcess(d, tmp_path / "b").launch()
        try:
            a.wait()
            b.wait()
            printed = re.search(r"setup\?token=([\w-]+)", a.log())
            assert printed, a.log()  # `keyfob serve` printed a link on its console
            link_token = d.cli(tmp_path / "cli", "setup-link").strip().rsplit("=", 1)[1]
            assert httpx.get(f"{b.url}/setup").status_code == 403  # no token, no setup
            with httpx.Client() as browser:
                # the link's first request on A, the form on B, its post on A again
                first = browser.get(f"{a.url}/setup?token={link_token}")
                assert first.status_code in (302, 303, 307)
                form = browser.get(f"{b.url}/setup")
                assert form.status_code == 200, form.text
                done = browser.post(
                    f"{a.url}/setup",
                    data={
                        "csrf_token": hidden(form.text, "csrf_token"),
                        "username": OWNER,
                        "timezone": "UTC",
                        "password": PASSWORD,
                        "password_confirm": PASSWORD,
                    },
                )
                assert done.status_code in (302, 303), done.text
                assert browser.get(f"{b.url}/").status_code == 200  # signed in on B too
            with httpx.Client() as other:  # the printed link is dead now: an owner exists
                late = other.get(f"{b.url}/setup?token={printed.group(1)}")
                assert late.status_code in (302, 303) and late.headers["location"] == "/login"
        finally:
            a.stop()
            b.stop()


def test_a_used_or_unknown_setup_token_is_refused(tmp_path: Path) -> None:
    async def go(url: str) -> None:
        store = await Store.open(url)
        try:
            token = await store.setup_tokens.mint()
            assert await store.setup_tokens.valid(token)
            assert await store.setup_tokens.use(token)
            assert not await store.setup_tokens.use(token)  # once
            assert not await store.setup_tokens.valid(token)
            assert not await store.setup_tokens.valid("guess" * 8)
            expired = await store.setup_tokens.mint(ttl_s=-1)
            assert not await store.setup_tokens.use(expired)
        finally:
            await store.close()

    with fresh_database() as url:
        asyncio.run(go(url))


async def _seed(url: str, master_key: str, fakellm: FakeLLM) -> dict[str, Any]:
    from keyfob.context import Keyfob
    from keyfob.providers.linking import link_provider

    settings = Settings(database_url=url, master_key=master_key)
    kf = await Keyfob.open(settings)
    try:
        owner = await kf.store.users.create(OWNER, "x", is_owner=True)
        provider = await link_provider(
            kf,
            user_id=owner.id,
            name="fake",
            kind="openai_compatible",
            base_url=fakellm.base_url,
            api_key="sk-rotated-0123456789",
            models=["gpt-4o-mini"],
            is_local=True,
        )
        minted = await grant_token(
            kf.store, user_id=owner.id, models=["fake/gpt-4o-mini"], cap_micro_usd=10**6
        )
        return {"provider": provider.id, **minted}
    finally:
        await kf.close()


async def _envelope_key(url: str, provider_id: str) -> str | None:
    store = await Store.open(url)
    try:
        found = [p for p in await store.providers.list_all() if p.id == provider_id]
        return Vault.key_id_in(found[0].credential_envelope or "")
    finally:
        await store.close()


def _chat(base: str, token: str) -> int:
    answer = httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "fake/gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
        timeout=30,
    )
    return answer.status_code


def test_vault_rotate_re_encrypts_in_place_while_hosted_processes_serve(
    tmp_path: Path, fakellm: FakeLLM
) -> None:
    old, new = new_master_key(), new_master_key()
    with fresh_database() as url:
        d = Deployment(url, "http://127.0.0.1:1", master_key=old)
        d.cli(tmp_path / "cli", "migrate")
        seeded = asyncio.run(_seed(url, old, fakellm))
        assert asyncio.run(_envelope_key(url, seeded["provider"])) == key_id_of(_raw(old))
        d.master_key = f"{old},{new}"  # step 1: every process gets the new key, newest last
        server = HostedProcess(d, tmp_path / "s").start()
        try:
            assert _chat(server.url, seeded["token"]) == 200
            said = d.cli(tmp_path / "cli", "vault", "rotate")  # step 2: while serving
            assert f"1 credential(s) re-encrypted under key {key_id_of(_raw(new))}" in said
            assert "you may drop every key but the newest" in said
            assert asyncio.run(_envelope_key(url, seeded["provider"])) == key_id_of(_raw(new))
            assert _chat(server.url, seeded["token"]) == 200
            again = d.cli(tmp_path / "cli", "vault", "rotate")
            assert "0 credential(s) re-encrypted" in again
        finally:
            server.stop()
        d.master_key = new  # step 3: the old key dropped
        server = HostedProcess(d, tmp_path / "s2").start()
        try:
            assert _chat(server.url, seeded["token"]) == 200
        finally:
            server.stop()


def _raw(key: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))


def test_vault_keygen_prints_a_usable_key(tmp_path: Path) -> None:
    from tests.support import cli

    key = cli(tmp_path, "vault", "keygen").stdout.strip()
    assert len(_raw(key)) == 32
    Vault.from_keys([_raw(key)])


def test_an_unreachable_redis_is_refused_at_start(tmp_path: Path) -> None:
    with fresh_database() as url:
        d = Deployment(url, "https://keys.example.org")
        dead = f"redis://:sesame-0123@127.0.0.1:{free_port()}/0"
        proc = HostedProcess(d, tmp_path / "a", more={"KEYFOB_REDIS_URL": dead}).launch()
        assert proc.exit_code() == 1
        log = proc.log()
        assert "cannot reach Redis" in log and "Traceback" not in log, log
        assert "sesame-0123" not in log


def test_workers_share_one_port_and_their_metrics(tmp_path: Path) -> None:
    import secrets as _secrets

    token = _secrets.token_urlsafe(32)
    with fresh_database() as url:
        port = free_port()
        d = Deployment(url, f"http://127.0.0.1:{port}")
        d.extra.update(KEYFOB_METRICS_TOKEN=token, KEYFOB_DB_PROCESSES="2")
        proc = HostedProcess(d, tmp_path / "w", port=port, more={"KEYFOB_WORKERS": "2"})
        proc.start()
        try:
            for _ in range(20):
                assert httpx.get(f"{proc.url}/readyz").status_code == 200
            scraped = httpx.get(
                f"{proc.url}/metrics", headers={"Authorization": f"Bearer {token}"}
            ).text
            line = next(
                ln
                for ln in scraped.splitlines()
                if ln.startswith('keyfob_http_requests_total{status="200",surface="probes"}')
            )
            assert float(line.rsplit(" ", 1)[1]) >= 20  # every worker's count, summed
            assert "Started parent process" in proc.log() or "worker" in proc.log().lower()
        finally:
            proc.stop()


PGBOUNCER = "/usr/sbin/pgbouncer"


def _pgbouncer(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """PgBouncer in transaction pooling mode in front of the suite's PostgreSQL."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # the postgres user (below) writes its log here
    (directory / "users.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
unix_socket_dir =
logfile = {directory}/pgbouncer.log
ignore_startup_parameters = extra_float_digits
"""
    )
    for f in directory.iterdir():
        f.chmod(0o644)
    # PgBouncer will not run as root; as root, it switches to the postgres user
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [PGBOUNCER, *user, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("pgbouncer did not start")


@pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="needs pgbouncer (make services)")
def test_hosted_processes_work_through_pgbouncer_transaction_pooling(
    tmp_path: Path, fakellm: FakeLLM
) -> None:
    import tempfile

    # outside pytest's 0700 tree: PgBouncer runs as the postgres user when we are root
    scratch = tempfile.TemporaryDirectory(prefix="keyfob-pgbouncer-")
    bouncer, port = _pgbouncer(Path(scratch.name))
    try:
        with fresh_database() as direct:
            name = direct.rsplit("/", 1)[1]
            pooled = f"postgresql://postgres@127.0.0.1:{port}/{name}"
            d = Deployment(pooled, "http://127.0.0.1:1")
            d.extra.update(KEYFOB_DB_STATEMENT_CACHE_SIZE="0", KEYFOB_DB_CONNECTION_BUDGET="50")
            seeded = asyncio.run(_seed(direct, d.master_key, fakellm))
            servers = [
                HostedProcess(d, tmp_path / f"s{i}").launch() for i in range(2)
            ]  # migrations through the pooler, at once: the advisory lock is a transaction's
            try:
                for s in servers:
                    s.wait()
                with ThreadPoolExecutor(max_workers=16) as pool:
                    statuses = list(
                        pool.map(lambda i: _chat(servers[i % 2].url, seeded["token"]), range(40))
                    )
                assert statuses == [200] * 40, statuses
                for s in servers:
                    assert "prepared statement" not in s.log(), s.log()
            finally:
                for s in servers:
                    s.stop()
    finally:
        bouncer.terminate()
        bouncer.wait(10)
        scratch.cleanup()
