"""Redis stopped mid-run under a hosted process (issue 13): money is still decided by
PostgreSQL, revocation still refuses at the next request, logins go on, and the limits
kept in Redis fall back to the process's own memory (still enforced, never a 500), as
docs/DEPLOY.md and docs/SCALING.md say. The test starts its own redis-server on a free
port, so stopping it touches nobody else."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OWNER, OWNER_PASSWORD
from tests.hosted import Deployment, HostedProcess, fresh_database
from tests.oauth_app import Browser
from tests.support import FakeLLM, free_port

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
MODEL = "fake/gpt-4o-mini"

pytestmark = pytest.mark.skipif(not Path(REDIS).exists(), reason="redis-server is not installed")


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


async def _seed(url: str, master_key: str, fakellm: FakeLLM) -> str:
    """The owner's provider (fakellm, priced) and an access token of a grant: its token."""
    import secrets as _secrets

    from keyfob.context import Keyfob
    from keyfob.providers.linking import link_provider
    from keyfob.settings import Settings
    from keyfob.store.records import Token
    from keyfob.tokens import Kind, hash_token, new_id, new_token

    kf = await Keyfob.open(Settings(database_url=url, master_key=master_key))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None
        provider = await link_provider(
            kf,
            user_id=owner.id,
            name="fake",
            kind="openai_compatible",
            base_url=fakellm.base_url,
            api_key="sk-redis-down-0123456789",
            models=["gpt-4o-mini"],
        )
        await kf.store.providers.set_price(
            provider.id,
            "gpt-4o-mini",
            input_micro_usd_per_mtok=1_000_000,
            output_micro_usd_per_mtok=1_000_000,
            cached_input_micro_usd_per_mtok=None,
        )
        client = await kf.store.clients.add(
            name=f"app {_secrets.token_hex(2)}",
            redirect_uris=["http://127.0.0.1/cb"],
            is_public=True,
            secret_hash=None,
        )
        grant = await kf.store.grants.upsert(
            user_id=owner.id, client_id=client.id, models=[MODEL], cap_micro_usd=1_000_000
        )
        token = new_token(Kind.ACCESS)
        now = time.time()
        await kf.store.tokens.save(
            Token(
                hash_token(token),
                "access",
                grant.id,
                client.id,
                new_id(),
                "",
                None,
                now,
                now + 3600,
                None,
                None,
            )
        )
        return token
    finally:
        await kf.close()


@pytest.fixture
def deployment(
    tmp_path: Path, fakellm: FakeLLM
) -> Iterator[tuple[Deployment, HostedProcess, RedisServer, str]]:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with fresh_database("keyfob_redis_down") as url:
            port = free_port()
            d = Deployment(url, f"http://127.0.0.1:{port}")
            d.extra.update(
                KEYFOB_REDIS_URL=redis.url,
                KEYFOB_UPSTREAM_ALLOW_PRIVATE="127.0.0.0/8",
                KEYFOB_REGISTRATIONS_PER_HOUR_PER_ADDRESS="3",
            )
            d.cli(tmp_path / "cli", "migrate")
            d.cli(tmp_path / "cli", "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
            token = asyncio.run(_seed(url, d.master_key, fakellm))
            proc = HostedProcess(d, tmp_path / "p", port=port).start()
            try:
                yield d, proc, redis, token
            finally:
                proc.stop()
    finally:
        redis.kill()


def _register(base: str) -> httpx.Response:
    return httpx.post(
        f"{base}/oauth/register",
        json={
            "client_name": "probe",
            "redirect_uris": ["http://127.0.0.1:9/cb"],
            "token_endpoint_auth_method": "none",
        },
        timeout=30,
    )


def _chat(base: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hello"}]},
        timeout=60,
    )


def test_redis_stopped_mid_run(
    deployment: tuple[Deployment, HostedProcess, RedisServer, str], fakellm: FakeLLM
) -> None:
    d, proc, redis, token = deployment
    base = proc.url
    assert [_register(base).status_code for _ in range(2)] == [201, 201]  # counted in Redis
    assert _chat(base, token).status_code == 200

    redis.kill()

    ready = httpx.get(f"{base}/readyz", timeout=30)
    checks: dict[str, Any] = ready.json()["checks"]
    assert ready.status_code == 200, ready.text  # the balancer keeps it: money is elsewhere
    assert checks["database"] == "ok" and "per process" in checks["redis"]

    served = fakellm.request_count()
    answer = _chat(base, token)  # money: PostgreSQL decides, Redis is not asked
    assert answer.status_code == 200, answer.text
    assert fakellm.request_count() == served + 1
    assert answer.headers["x-keyfob-cost-usd"] != "0.000000"

    # the registration limit still holds, in this process's memory (3 an hour), no 500
    statuses = [_register(base).status_code for _ in range(5)]
    assert statuses == [201, 201, 201, 429, 429], statuses

    # logins go on (the failure throttle falls back too)
    with httpx.Client(timeout=30) as http:
        assert Browser(http, base).login().status_code == 303
        wrong = http.post(f"{base}/login", data={"username": OWNER, "password": "nope"})
        assert wrong.status_code in (401, 403), wrong.status_code  # a form answer, not a 500

    # revocation does not depend on Redis either
    from keyfob.store import Store
    from keyfob.tokens import hash_token

    async def revoke() -> None:
        store = await Store.open(d.database_url, migrate=False)
        try:
            found = await store.tokens.get(hash_token(token))
            assert found is not None
            await store.grants.revoke(found.grant_id)
        finally:
            await store.close()

    asyncio.run(revoke())
    assert _chat(base, token).status_code == 401
    assert (
        httpx.get(
            f"{base}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).status_code
        == 401
    )

    # Redis back: the shared counts are used again (a fresh Redis: empty)
    redis.start()
    for _ in range(50):
        if "per process" not in httpx.get(f"{base}/readyz", timeout=30).json()["checks"]["redis"]:
            break
        time.sleep(0.1)
    assert httpx.get(f"{base}/readyz", timeout=30).json()["checks"]["redis"] == "ok"
    assert _register(base).status_code == 201
    assert "Traceback" not in proc.log()
