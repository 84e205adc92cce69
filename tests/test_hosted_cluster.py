"""The reference deployment, run: three hosted ``keyfob serve`` processes on one
PostgreSQL database and Redis, behind nginx round-robin with TLS
(docs/deploy/nginx-keyfob.conf, rendered on free loopback ports).

It walks what broke before issue 12: a login, consent, code exchange and refresh each on
a different process (each signed its cookies with its own key: 9/9 logins got 403);
logins and registrations through the balancer (each process counted its own limits: 60
registrations of 70 accepted against 20 an hour); concurrent calls across processes
against a small cap (no overspend; the ledger equals what fakellm served); a revoke on
one process refused on every endpoint of every process within a second; readiness with
the database gone; eight processes starting together on a new database (7 of 12 died).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyfob.settings import Settings
from keyfob.store import Store
from tests.conftest import OWNER, OWNER_PASSWORD
from tests.hosted import Deployment, HostedProcess, drop_database, fresh_database
from tests.oauth_app import Browser, hidden, pkce, query_of
from tests.support import FakeLLM, free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MODEL = "fake/gpt-4o-mini"
REDIRECT = "http://127.0.0.1:9/callback"

pytestmark = [
    pytest.mark.skipif(not Path(NGINX).exists(), reason="needs nginx (make services)"),
    pytest.mark.timeout(300),
]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (the suite's CA is the certificate itself)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_nginx(
    prefix: Path, upstream_ports: list[int], cert: Path, key: Path, port: int
) -> tuple[Nginx, list[int]]:
    """nginx in the foreground as this user, every path under ``prefix``: the reference
    site on ``port``, and (for the test only) one TLS port per process, so a step can
    be sent to a process of its choosing with the same cookies and headers."""
    site = (ROOT / "docs" / "deploy" / "nginx-keyfob.conf").read_text()
    for name, value in {
        "@UPSTREAMS@": "\n".join(f"    server 127.0.0.1:{p};" for p in upstream_ports),
        "@LISTEN@": f"127.0.0.1:{port}",
        "@SERVER_NAME@": "127.0.0.1",
        "@CERT@": str(cert),
        "@KEY@": str(key),
    }.items():
        site = site.replace(name, value)
    assert not re.search(r"@[A-Z_]+@", site), site
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    (prefix / "keyfob.conf").write_text(site)
    temp = prefix / "tmp"
    direct = [free_port() for _ in upstream_ports]
    pinned = "\n".join(
        f"""
    server {{
        listen 127.0.0.1:{own} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{up};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
        }}
    }}"""
        for own, up in zip(direct, upstream_ports, strict=True)
    )
    (prefix / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/keyfob.conf;
{pinned}
}}
"""
    )
    temp.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"https://127.0.0.1:{port}/livez", verify=False, timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, (prefix / "logs" / "error.log").read_text()
            time.sleep(0.1)
    return Nginx(proc, port, prefix), direct


async def _seed(url: str, master_key: str, fakellm: FakeLLM) -> dict[str, Any]:
    """The owner's provider (fakellm, priced) and an app registered by the owner."""
    from keyfob.context import Keyfob
    from keyfob.oauth.clients import register_app
    from keyfob.providers.linking import link_provider

    # linked through a personal-mode context: hosted linking refuses loopback upstreams,
    # and fakellm listens on 127.0.0.1 (the servers are told KEYFOB_UPSTREAM_ALLOW_PRIVATE)
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
            api_key="sk-cluster-0123456789",
            models=["gpt-4o-mini"],
        )
        # 1 USD per million tokens both ways: a token costs one micro-dollar
        await kf.store.providers.set_price(
            provider.id,
            "gpt-4o-mini",
            input_micro_usd_per_mtok=1_000_000,
            output_micro_usd_per_mtok=1_000_000,
            cached_input_micro_usd_per_mtok=None,
        )
        clients = {}
        for name in ("walk", "cap", "revoke", "restart", "peer"):  # a grant each: tests apart
            client, _secret = await register_app(
                kf.store, name=f"{name} app", redirect_uris=[REDIRECT], public=True
            )
            clients[name] = client.id
        return {"clients": clients, "owner_id": owner.id}
    finally:
        await kf.close()


@dataclass
class Cluster:
    deployment: Deployment
    processes: list[HostedProcess]
    nginx: Nginx
    ca: ssl.SSLContext
    seeded: dict[str, Any]
    #: each process through its own TLS port (test only): pick where a step lands
    pinned: list[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.nginx.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(verify=self.ca, timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, fakellm: FakeLLM) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    cert, key = self_signed(root)
    nginx_port = free_port()
    with fresh_database("keyfob_cluster") as url:
        d = Deployment(url, f"https://127.0.0.1:{nginx_port}")
        d.extra.update(
            KEYFOB_TRUSTED_PROXIES="127.0.0.1",
            KEYFOB_REDIS_URL="redis://127.0.0.1:6379/0",
            KEYFOB_REDIS_PREFIX=f"kf-test-{secrets.token_hex(4)}:",
            KEYFOB_DB_PROCESSES="3",
            KEYFOB_METRICS_TOKEN=secrets.token_urlsafe(32),
            KEYFOB_UPSTREAM_ALLOW_PRIVATE="127.0.0.0/8",
            KEYFOB_LOG_FORMAT="json",
            KEYFOB_LOG_LEVEL="info",
        )
        d.cli(root / "cli", "migrate")
        d.cli(root / "cli", "init", "--username", OWNER, KEYFOB_PASSWORD=OWNER_PASSWORD)
        seeded = asyncio.run(_seed(url, d.master_key, fakellm))
        # stable instance ids, as systemd units or a stateful set give them
        procs = [
            HostedProcess(d, root / f"p{i}", more={"KEYFOB_INSTANCE_ID": f"p{i}"}).launch()
            for i in range(3)
        ]
        nginx = None
        try:
            for p in procs:
                p.wait()
            nginx, direct = start_nginx(
                root / "nginx", [p.port for p in procs], cert, key, nginx_port
            )
            ca = ssl.create_default_context(cafile=str(cert))
            yield Cluster(d, procs, nginx, ca, seeded, [f"https://127.0.0.1:{p}" for p in direct])
        finally:
            if nginx is not None:
                nginx.stop()
            for p in procs:
                p.stop()


# --- the walk ----------------------------------------------------------------------------


def _authorize_url(base: str, client_id: str, challenge: str, state: str) -> str:
    return (
        f"{base}/oauth/authorize?response_type=code&client_id={client_id}"
        f"&redirect_uri={REDIRECT}&code_challenge={challenge}&code_challenge_method=S256"
        f"&state={state}&scope=models"
    )


def _sign_in_and_consent(
    c: Cluster, http: httpx.Client, app: str, cap_usd: str = "5"
) -> dict[str, Any]:
    """Login on process 0, consent on 1, code exchange on 2, refresh on 0."""
    a, b, third = c.pinned
    client_id = c.seeded["clients"][app]
    assert Browser(http, a).login().status_code == 303
    assert http.get(f"{a}/", follow_redirects=False).status_code == 200  # signed in on A
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(8)
    location = Browser(http, b).approve(
        _authorize_url(b, client_id, challenge, state), cap_usd=cap_usd
    )
    got = query_of(location)
    assert got["state"] == state and "code" in got, location
    token = http.post(
        f"{third}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    tokens = token.json()
    refreshed = http.post(
        f"{a}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    return dict(refreshed.json())


def test_login_consent_exchange_and_refresh_each_on_another_process(cluster: Cluster) -> None:
    with cluster.client() as http:
        tokens = _sign_in_and_consent(cluster, http, "walk")
    for base in cluster.pinned:  # the access token works on every process
        models = httpx.get(
            f"{base}/v1/models",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            verify=cluster.ca,
        )
        assert models.status_code == 200 and MODEL in models.text, models.text


def test_logins_through_the_round_robin_balancer_all_work(cluster: Cluster) -> None:
    for _ in range(9):
        with cluster.client() as http:
            answer = Browser(http, cluster.url).login()
            assert answer.status_code == 303, answer.text[:500]
            assert http.get(f"{cluster.url}/").status_code == 200


def test_failed_logins_are_counted_once_for_every_process(cluster: Cluster) -> None:
    from keyfob.web.ratelimit import FREE_ATTEMPTS

    statuses = []
    with cluster.client() as http:
        for i in range(FREE_ATTEMPTS + 3):  # each guess on the next process in turn
            base = cluster.pinned[i % 3]
            page = http.get(f"{base}/login")
            statuses.append(
                http.post(
                    f"{base}/login",
                    data={
                        "csrf_token": hidden(page.text, "csrf_token"),
                        "username": "mallory-target",
                        "password": f"guess {i}",
                    },
                ).status_code
            )
    assert statuses[:FREE_ATTEMPTS] == [401] * FREE_ATTEMPTS
    assert set(statuses[FREE_ATTEMPTS:]) == {429}, statuses


def test_registration_limit_is_shared_by_every_process(cluster: Cluster) -> None:
    body = {
        "client_name": "spammer",
        "redirect_uris": ["http://127.0.0.1:1/cb"],
        "token_endpoint_auth_method": "none",
    }
    with cluster.client() as http:
        statuses = [
            http.post(f"{cluster.url}/oauth/register", json=body).status_code for _ in range(70)
        ]
    assert statuses.count(201) == 20 and statuses.count(429) == 50, statuses


def _chat(c: Cluster, base: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "model": MODEL,
            "max_tokens": 40,
            "messages": [{"role": "user", "content": "hello from the cluster"}],
        },
        verify=c.ca,
        timeout=60,
    )


async def _ledger(url: str, grant_id: str) -> list[Any]:
    store = await Store.open(url, migrate=False)
    try:
        return [e for e in await store.ledger.entries(limit=100000) if e.grant_id == grant_id]
    finally:
        await store.close()


def test_concurrent_calls_across_processes_never_pass_a_small_cap(
    cluster: Cluster, fakellm: FakeLLM
) -> None:
    with cluster.client() as http:
        tokens = _sign_in_and_consent(cluster, http, "cap", cap_usd="0.001")  # 1,000 micro-USD
    served_before = fakellm.request_count()
    bases = [cluster.url, *cluster.pinned]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(
            pool.map(lambda i: _chat(cluster, bases[i % 4], tokens["access_token"]), range(48))
        )
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, statuses
    ok = [r for r in answers if r.status_code == 200]
    assert ok and statuses.count(429) > 0, statuses
    served = fakellm.request_count() - served_before
    assert served == len(ok)  # refused calls never reached the upstream
    grant_id = _grant_of(cluster, tokens["access_token"])
    rows = asyncio.run(_ledger(cluster.deployment.database_url, grant_id))
    assert [r.status for r in rows].count("settled") == len(ok) == len(rows)
    spent = sum(r.cost_micro_usd for r in rows)
    assert spent <= 1000
    reported = sum(
        r.json()["usage"]["prompt_tokens"] + r.json()["usage"]["completion_tokens"] for r in ok
    )
    assert spent == reported  # one micro-dollar per token, as fakellm reported them


def _grant_of(c: Cluster, access_token: str) -> str:
    from keyfob.tokens import hash_token

    async def go() -> str:
        store = await Store.open(c.deployment.database_url, migrate=False)
        try:
            found = await store.tokens.get(hash_token(access_token))
            assert found is not None
            return str(found.grant_id)
        finally:
            await store.close()

    return asyncio.run(go())


ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/models", None),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    ),
    ("POST", "/v1/responses", {"model": MODEL, "input": "x"}),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "x"}),
    (
        "POST",
        "/v1/messages",
        {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
    ),
    (
        "POST",
        "/v1/messages/count_tokens",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    ),
    ("POST", "/v1/keyfob/quote", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    ("GET", "/v1/keyfob/allowance", None),
    ("GET", "/v1/keyfob/usage", None),
]


def test_a_revoke_on_one_process_is_refused_everywhere_within_a_second(cluster: Cluster) -> None:
    with cluster.client() as http:
        tokens = _sign_in_and_consent(cluster, http, "revoke")
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    with httpx.Client(verify=cluster.ca, timeout=10) as http:
        for base in cluster.pinned:  # warm every process's token cache first
            assert http.get(f"{base}/v1/models", headers=bearer).status_code == 200
        revoked = http.post(
            f"{cluster.pinned[0]}/oauth/revoke",
            data={
                "token": tokens["refresh_token"],
                "client_id": cluster.seeded["clients"]["revoke"],
            },
        )
        assert revoked.status_code == 200
        at = time.monotonic()
        pending = {(base, method, path) for base in cluster.pinned for method, path, _ in ENDPOINTS}
        bodies = {path: body for _, path, body in ENDPOINTS}
        while pending and time.monotonic() - at < 3:
            for base, method, path in sorted(pending):
                answer = http.request(method, f"{base}{path}", headers=bearer, json=bodies[path])
                if answer.status_code == 401:
                    pending.discard((base, method, path))
        elapsed = time.monotonic() - at
    assert not pending, pending
    assert elapsed <= 1.0, elapsed


def test_probes_and_metrics(cluster: Cluster) -> None:
    first = cluster.processes[0]
    ready = httpx.get(f"{first.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "schema": "head",
        "draining": False,
    }
    assert httpx.get(f"{first.url}/livez").text == "ok"
    assert httpx.get(f"{first.url}/metrics", headers={"Host": "127.0.0.1"}).status_code == 401
    with cluster.client() as http:
        assert http.get(f"{cluster.url}/metrics").status_code == 404  # never through nginx
    token = cluster.deployment.extra["KEYFOB_METRICS_TOKEN"]
    scraped = httpx.get(f"{first.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200
    for name in (
        "keyfob_http_requests_total",
        "keyfob_http_request_duration_seconds_bucket",
        "keyfob_reservations_held",
        "keyfob_cost_micro_usd_total",
    ):
        assert name in scraped.text, name


def test_logs_are_json_lines_with_the_request_id(cluster: Cluster) -> None:
    import json

    lines = [ln for p in cluster.processes for ln in p.log().splitlines() if ln.startswith("{")]
    assert lines
    parsed = [json.loads(ln) for ln in lines]
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    # a request's lines carry its id (the registrations of the test above logged theirs)
    registered = [p for p in parsed if p["message"].startswith("registered public client")]
    assert registered and all(len(p.get("request_id", "")) == 16 for p in registered)
    assert len({p["request_id"] for p in registered}) == len(registered)


def _streams_in_flight(c: Cluster, base: str, token: str, n: int) -> list[Any]:
    """``n`` long streams (about three seconds each) through ``base``, each having
    received its first bytes; the caller kills the process serving them."""
    started: list[Any] = []

    def one(_: int) -> None:
        http = httpx.Client(verify=c.ca, timeout=60)
        response = http.send(
            http.build_request(
                "POST",
                f"{base}/v1/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "model": MODEL,
                    "max_tokens": 2000,
                    "stream": True,
                    "messages": [{"role": "user", "content": "tell a long story"}],
                },
            ),
            stream=True,
        )
        assert response.status_code == 200, response.read()
        chunks = response.iter_raw()
        next(chunks)  # the stream has begun upstream (the iterator is kept: dropping it
        started.append((http, response, chunks))  # would close the stream)

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(one, range(n)))
    return started


def _kill_9(p: HostedProcess) -> None:
    assert p.proc is not None
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait()


def _open_rows(c: Cluster, grant_id: str) -> tuple[list[Any], list[Any]]:
    rows = asyncio.run(_ledger(c.deployment.database_url, grant_id))
    return rows, [r for r in rows if r.status == "reserved"]


def _assert_released(rows: list[Any], streams: int) -> None:
    """Every stream is in the ledger once: the killed ones charged their reservation and
    flagged for reconciliation, none left holding money."""
    assert len(rows) == len({r.id for r in rows}) >= streams
    charged = [r for r in rows if r.status == "charged_reservation"]
    assert len(charged) >= streams
    assert all(r.needs_reconciliation and r.cost_micro_usd == r.reserved_micro_usd for r in charged)


def test_a_restart_with_the_same_id_releases_its_reservations_at_once(
    cluster: Cluster, fakellm: FakeLLM
) -> None:
    """kill -9 a process with six streams in flight, start it again with the same
    instance id: its earlier life's reservations are released by its own start, long
    before its peers would find it silent."""
    from keyfob.instances import DEAD_AFTER_S

    with cluster.client() as http:
        tokens = _sign_in_and_consent(cluster, http, "restart")
    grant_id = _grant_of(cluster, tokens["access_token"])
    victim = cluster.processes[0]
    streams = _streams_in_flight(cluster, cluster.pinned[0], tokens["access_token"], 6)
    killed_at = time.monotonic()
    _kill_9(victim)
    for http, response, _chunks in streams:
        response.close()
        http.close()
    rows, held = _open_rows(cluster, grant_id)
    assert len(held) == 6, [(r.status, r.error) for r in rows]  # held by the dead process
    again = HostedProcess(
        cluster.deployment, victim.data_dir, port=victim.port, more=victim.more
    ).start()
    cluster.processes[0] = again
    rows, still_open = _open_rows(cluster, grant_id)
    assert not still_open
    assert time.monotonic() - killed_at < DEAD_AFTER_S  # its own start, not the reaper
    _assert_released(rows, 6)


def test_a_dead_peers_reservations_are_released_within_seconds(
    cluster: Cluster, fakellm: FakeLLM
) -> None:
    """kill -9 a process with streams in flight and leave it dead: the others notice its
    silence and release what it held within the reaper's bound."""
    from keyfob.instances import DEAD_AFTER_S, HEARTBEAT_S

    with cluster.client() as http:
        tokens = _sign_in_and_consent(cluster, http, "peer")
    grant_id = _grant_of(cluster, tokens["access_token"])
    victim = cluster.processes[1]
    streams = _streams_in_flight(cluster, cluster.pinned[1], tokens["access_token"], 4)
    killed_at = time.monotonic()
    _kill_9(victim)
    for http, response, _chunks in streams:
        response.close()
        http.close()
    bound = DEAD_AFTER_S + 2 * HEARTBEAT_S + 5
    while time.monotonic() - killed_at < bound:
        rows, still_open = _open_rows(cluster, grant_id)
        if not still_open:
            break
        time.sleep(0.5)
    released_after = time.monotonic() - killed_at
    assert not still_open, f"still held after {released_after:.1f} s"
    _assert_released(rows, 4)
    # the survivors serve the same grant meanwhile
    assert _chat(cluster, cluster.pinned[2], tokens["access_token"]).status_code == 200
    cluster.processes[1] = HostedProcess(
        cluster.deployment, victim.data_dir, port=victim.port, more=victim.more
    ).start()


def test_eight_processes_starting_together_on_a_new_database_all_come_up(
    tmp_path: Path,
) -> None:
    with fresh_database("keyfob_eight") as url:
        d = Deployment(url, "https://127.0.0.1:1")
        d.extra.update(KEYFOB_DB_PROCESSES="8", KEYFOB_DB_POOL_SIZE="2", KEYFOB_DB_MAX_OVERFLOW="2")
        procs = [HostedProcess(d, tmp_path / f"p{i}") for i in range(8)]
        for p in procs:  # all at once: nobody waits for anybody
            p.launch()
        try:
            for p in procs:
                wait_http(f"{p.url}/readyz", timeout=90, proc=p.proc)
                assert httpx.get(f"{p.url}/readyz").json()["checks"]["schema"] == "head"
            logs = "".join(p.log() for p in procs)
            assert "UniqueViolation" not in logs and "Traceback" not in logs, logs[-3000:]
            # the database gone: no process may call itself ready or healthy
            drop_database(url)
            for p in procs[:2]:
                ready = httpx.get(f"{p.url}/readyz", timeout=10)
                assert ready.status_code == 503, ready.text
                assert ready.json()["checks"]["database"].startswith("unreachable")
                assert httpx.get(f"{p.url}/healthz", timeout=10).status_code == 503
                assert httpx.get(f"{p.url}/livez").status_code == 200  # alive, not ready
        finally:
            for p in procs:
                p.stop()
