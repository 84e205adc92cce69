"""The systems under test, each started the same way and described by one ``Target``.

Why one shape for all: the load module only needs a URL, headers and a body per call
kind, and the report only needs a pid to read CPU and memory from, so direct, the bare
proxy, Keyfob and LiteLLM are measured by exactly the same code.

Model names differ per target because each routes differently: nginx and the bare proxy
route by path (``/stream/...`` answers SSE), Keyfob by ``PROVIDER/MODEL`` (two providers,
``nginx`` and ``nginxs``, linked to the two upstream paths), LiteLLM by a model alias.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.upstream import MODEL, Upstream

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: Pinned so a run is repeatable; its own venv keeps its pins out of the project's.
#: 1.108.7: the newest 1.108.x whose ``litellm-proxy-extras`` pin resolved when this was
#: written (1.108.8+ pinned extras releases the index did not have).
LITELLM_SPEC = "litellm[proxy]==1.108.7"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_MASTER_KEY = "sk-bench-master-key"
#: Portkey's open-source gateway (Node), installed with npm into a git-ignored folder.
PORTKEY_SPEC = "@portkey-ai/gateway@1.15.2"
PORTKEY_DIR = BENCH_DIR / ".portkey"
#: TensorZero's gateway from its wheel (the Python client carries the Rust gateway).
TENSORZERO_SPEC = "tensorzero==2026.6.0"
#: Measured on Node 20: every streamed chat completion fails with 500 "Something went
#: wrong" (``TypeError: immutable`` in ``updateHeaders``: the gateway appends its headers
#: to the upstream's fetch response, whose headers Node's fetch makes immutable; the
#: gateway's own issues 1389 and 1550). Plain calls work.
PORTKEY_NO_STREAMS = (
    "Portkey 1.15.2 on Node 20 answers every streamed call with 500 (TypeError: immutable "
    "in its updateHeaders; the gateway's issues 1389 and 1550), so only its plain calls "
    "are measured."
)
TENSORZERO_VENV = BENCH_DIR / ".venv-tensorzero"
UPSTREAM_KEY = "sk-bench-upstream-key"
CAP_MICRO_USD = 10**15  # no allowance refusal during a run; the reservation still happens
PRICE_MICRO_USD_PER_MTOK = (150_000, 600_000)  # gpt-4o-mini list price, fixed for the run


@dataclass
class Target:
    """What the load generator needs to call one system, and whom to measure."""

    name: str
    base_url: str
    headers: dict[str, str]
    chat_path: str
    chat_model: str
    stream_path: str
    stream_model: str
    proc: procs.Proc | None = None
    port: int = 0
    #: the process owning the listening socket (the worker we measure)
    worker_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: bearer tokens wrk cycles through, one per call (several grants); empty: ``headers``
    tokens: list[str] = field(default_factory=list)
    #: several server processes (``--workers N``): CPU is summed over the whole tree
    multi: bool = False
    #: the PostgreSQL database it serves from, whose server CPU is measured beside its own
    db_name: str = ""
    #: run after the process stopped (dropping a database)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    #: headers of streamed calls when they differ (Portkey names the upstream path in one)
    stream_headers: dict[str, str] | None = None
    #: why streamed calls are not measured (empty: they are)
    no_streams: str = ""

    def headers_for(self, stream: bool) -> dict[str, str]:
        return self.stream_headers if stream and self.stream_headers is not None else self.headers

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {
            "model": self.stream_model if stream else self.chat_model,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 64,
        }
        if stream:
            payload["stream"] = True
        return json.dumps(payload, separators=(",", ":")).encode()

    def url(self, stream: bool) -> str:
        return self.base_url + (self.stream_path if stream else self.chat_path)

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU is this target's: its worker, or every process of
        its tree when it runs several workers."""
        if self.multi and self.proc is not None:
            return procs.tree(self.proc.pid)
        return [self.worker_pid] if self.worker_pid else []

    def stop(self) -> None:
        try:
            if self.proc is not None:
                self.proc.stop()
        finally:
            for undo in self.cleanups:
                undo()


def direct(upstream: Upstream) -> Target:
    """The floor: the load generator talks to nginx itself (no process of ours to measure)."""
    return Target(
        "direct",
        upstream.url,
        {},
        "/v1/chat/completions",
        MODEL,
        "/stream/v1/chat/completions",
        MODEL,
    )


def bare(upstream: Upstream, workdir: Path, cpus: set[int]) -> Target:
    port = procs.free_port()
    proc = procs.start(
        "bare",
        [sys.executable, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", upstream.url],
        workdir / "bare.log",
        cwd=REPO_ROOT,
        cpus=cpus,
    )
    t = Target(
        "bare",
        f"http://127.0.0.1:{port}",
        {},
        "/v1/chat/completions",
        MODEL,
        "/stream/v1/chat/completions",
        MODEL,
        proc,
        port,
    )
    procs.wait_http(t.base_url + "/v1/models", proc)
    t.worker_pid = procs.listening_pid(proc.pid, port)
    return t


# --- Keyfob, personal mode on SQLite -------------------------------------------------------


def keyfob_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFOB_")}
    env.update(KEYFOB_DATA_DIR=str(data_dir), KEYFOB_LOG_LEVEL="warning")
    return env


async def _seed_keyfob(
    data_dir: Path,
    upstream: Upstream,
    refresh_chains: int,
    *,
    settings: Any = None,
    grants: int = 1,
) -> dict[str, Any]:
    """Link the two upstream paths as providers, price the model, and mint credentials
    straight into the store (as tests/support.py does): ``grants`` apps, each with its
    grant and an access token for the gateway, and ``refresh_chains`` refresh tokens of
    the first grant, each the head of its own rotation family.

    ``settings``: where the store is (hosted: a personal-mode context on the hosted
    database, as tests/test_hosted_cluster.py seeds, because hosted linking refuses the
    loopback upstream that the hosted servers are told to allow)."""
    from keyfob.context import Keyfob
    from keyfob.providers.linking import link_provider
    from keyfob.settings import Settings
    from keyfob.store.records import Token
    from keyfob.tokens import Kind, hash_token, new_id, new_token

    kf = await Keyfob.open(settings if settings is not None else Settings(data_dir=data_dir))
    try:
        owner = await kf.store.users.owner()
        assert owner is not None, "keyfob init did not create the owner"
        for name, path in (("nginx", "/v1"), ("nginxs", "/stream/v1")):
            p = await link_provider(
                kf,
                user_id=owner.id,
                name=name,
                kind="openai_compatible",
                base_url=upstream.url + path,
                api_key=UPSTREAM_KEY,
                models=[MODEL],
            )
            await kf.store.providers.set_price(
                p.id,
                MODEL,
                input_micro_usd_per_mtok=PRICE_MICRO_USD_PER_MTOK[0],
                output_micro_usd_per_mtok=PRICE_MICRO_USD_PER_MTOK[1],
            )
        now = time.time()

        def token(kind: str, value: str, grant_id: str, client_id: str) -> Token:
            return Token(
                hash_token(value),
                kind,
                grant_id,
                client_id,
                new_id(),
                "",
                None,
                now,
                now + 24 * 3600,
                None,
                None,
            )

        access: list[str] = []
        minted: list[Token] = []
        first: dict[str, str] = {}
        for i in range(grants):
            client = await kf.store.clients.add(
                name=f"bench app {i}",
                redirect_uris=["http://127.0.0.1/cb"],
                is_public=True,
                secret_hash=None,
            )
            grant = await kf.store.grants.upsert(
                user_id=owner.id,
                client_id=client.id,
                models=[f"nginx/{MODEL}", f"nginxs/{MODEL}"],
                cap_micro_usd=CAP_MICRO_USD,
                timezone=owner.timezone,
            )
            access.append(new_token(Kind.ACCESS))
            minted.append(token("access", access[-1], grant.id, client.id))
            if i == 0:
                first = {"client_id": client.id, "grant_id": grant.id}
        refresh = [new_token(Kind.REFRESH) for _ in range(refresh_chains)]
        minted += [token("refresh", r, first["grant_id"], first["client_id"]) for r in refresh]
        await kf.store.tokens.save(*minted)
        return {
            "access_token": access[0],
            "access_tokens": access,
            "refresh_tokens": refresh,
            **first,
        }
    finally:
        await kf.close()


def keyfob(upstream: Upstream, workdir: Path, cpus: set[int], refresh_chains: int) -> Target:
    data_dir = workdir / "keyfob-data"
    data_dir.mkdir()
    env = keyfob_env(data_dir)
    subprocess.run(
        [sys.executable, "-m", "keyfob", "init", "--username", "bench"],
        env={**env, "KEYFOB_PASSWORD": secrets.token_urlsafe(24)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    seeded = asyncio.run(_seed_keyfob(data_dir, upstream, refresh_chains))
    port = procs.free_port()
    proc = procs.start(
        "keyfob",
        [sys.executable, "-m", "keyfob", "serve", "--port", str(port)],
        workdir / "keyfob.log",
        env=env,
        cpus=cpus,
    )
    t = Target(
        "keyfob",
        f"http://127.0.0.1:{port}",
        {"Authorization": f"Bearer {seeded['access_token']}"},
        "/v1/chat/completions",
        f"nginx/{MODEL}",
        "/v1/chat/completions",
        f"nginxs/{MODEL}",
        proc,
        port,
        extra=seeded,
    )
    procs.wait_http(t.base_url + "/healthz", proc)
    t.worker_pid = procs.listening_pid(proc.pid, port)
    return t


# --- Keyfob, hosted mode on PostgreSQL + Redis ---------------------------------------------

#: `make services` runs both on these addresses (trust authentication on loopback); the
#: bench creates a database of its own through the admin database and drops it afterwards.
PG_ADMIN_URL = os.environ.get("KEYFOB_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEYFOB_BENCH_REDIS", "redis://127.0.0.1:6379/0")


async def _pg_admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(prefix: str = "keyfob_bench") -> tuple[str, str]:
    """A new, empty database on the admin URL's server: (name, postgresql:// URL)."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _master_key() -> str:
    import base64

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def hosted_env(
    data_dir: Path, database_url: str, port: int, workers: int, redis_url: str = ""
) -> dict[str, str]:
    """Every setting hosted mode requires (docs/SETTINGS.md, settings_checks.py), as
    tests/hosted.py's ``Deployment`` gives them: the two key rings, a public URL (plain
    http is allowed on loopback), Redis with a prefix of its own, and the nginx upstream
    on 127.0.0.1 allowed on purpose (hosted egress refuses private addresses otherwise)."""
    env = keyfob_env(data_dir)
    env.update(
        KEYFOB_MODE="hosted",
        KEYFOB_DATABASE_URL=database_url,
        KEYFOB_MASTER_KEY=_master_key(),
        KEYFOB_SESSION_KEYS=secrets.token_urlsafe(48),
        KEYFOB_PUBLIC_URL=f"http://127.0.0.1:{port}",
        KEYFOB_REDIS_URL=redis_url or REDIS_URL,
        KEYFOB_REDIS_PREFIX=f"kf-bench-{secrets.token_hex(4)}:",
        KEYFOB_UPSTREAM_ALLOW_PRIVATE="127.0.0.0/8",
        KEYFOB_WORKERS=str(workers),
        KEYFOB_DB_PROCESSES=str(workers),
    )
    return env


def _cli(env: dict[str, str], *args: str, **more: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "keyfob", *args],
        env={**env, **more},
        capture_output=True,
        text=True,
        timeout=180,
    )
    if done.returncode != 0:
        raise RuntimeError(f"keyfob {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def prepare_hosted(
    upstream: Upstream,
    workdir: Path,
    refresh_chains: int,
    *,
    grants: int = 1,
    workers: int = 1,
    redis_url: str = "",
) -> tuple[dict[str, str], dict[str, Any], str]:
    """A fresh database migrated and seeded like the personal target (the owner through
    ``keyfob init``): (environment, seeded credentials, database name). The caller drops
    the database (``drop_database``)."""
    from keyfob.settings import Settings

    data_dir = workdir / f"hosted-data-{secrets.token_hex(3)}"
    data_dir.mkdir()
    name, url = create_database()
    try:
        port = procs.free_port()
        env = hosted_env(data_dir, url, port, workers, redis_url)
        env["KEYFOB_PORT"] = str(port)
        password = secrets.token_urlsafe(24)
        _cli(env, "migrate")
        _cli(env, "init", "--username", "bench", KEYFOB_PASSWORD=password)
        seeded = asyncio.run(
            _seed_keyfob(
                data_dir,
                upstream,
                refresh_chains,
                settings=Settings(
                    data_dir=data_dir, database_url=url, master_key=env["KEYFOB_MASTER_KEY"]
                ),
                grants=grants,
            )
        )
    except BaseException:
        drop_database(name)
        raise
    seeded["password"] = password
    return env, seeded, name


def keyfob_hosted(
    upstream: Upstream,
    workdir: Path,
    cpus: set[int],
    refresh_chains: int,
    *,
    name: str = "keyfob-hosted",
    workers: int = 1,
    grants: int = 1,
    redis_url: str = "",
) -> Target:
    """``keyfob serve --mode hosted`` on a database of its own (dropped at stop), with
    ``workers`` processes on one port (``--workers``) and ``grants`` grants, whose tokens
    wrk uses in turn (one grant: every call contends on the same counters)."""
    env, seeded, db = prepare_hosted(
        upstream, workdir, refresh_chains, grants=grants, workers=workers, redis_url=redis_url
    )
    port = int(env["KEYFOB_PORT"])
    try:
        proc = procs.start(
            name,
            [sys.executable, "-m", "keyfob", "serve", "--port", str(port)],
            workdir / f"{name}.log",
            env=env,
            cpus=cpus,
        )
    except BaseException:
        drop_database(db)
        raise
    t = Target(
        name,
        f"http://127.0.0.1:{port}",
        {"Authorization": f"Bearer {seeded['access_token']}"},
        "/v1/chat/completions",
        f"nginx/{MODEL}",
        "/v1/chat/completions",
        f"nginxs/{MODEL}",
        proc,
        port,
        extra={**seeded, "workers": workers, "grants": grants},
        tokens=list(seeded["access_tokens"]) if grants > 1 else [],
        multi=workers > 1,
        db_name=db,
        cleanups=[lambda: drop_database(db)],
    )
    try:
        procs.wait_http(t.base_url + "/readyz", proc, timeout_s=120)
        if workers > 1:
            procs.wait_workers(proc.pid, workers)
        t.worker_pid = procs.listening_pid(proc.pid, port)
    except BaseException:
        t.stop()
        raise
    return t


# --- LiteLLM proxy, no database --------------------------------------------------------------


def ensure_litellm() -> Path:
    """Create bench/.venv-litellm with the pinned LiteLLM on first use; returns its CLI."""
    cli = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / "bench-spec.txt"
    if cli.exists() and stamp.exists() and stamp.read_text().strip() == LITELLM_SPEC:
        return cli
    print(
        f"creating {LITELLM_VENV.relative_to(REPO_ROOT)} with {LITELLM_SPEC} (first use only)...",
        flush=True,
    )
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", LITELLM_SPEC],
        check=True,
    )
    stamp.write_text(LITELLM_SPEC + "\n")
    return cli


def litellm_config(upstream: Upstream) -> str:
    entries = []
    for alias, path in ((MODEL, "/v1"), (MODEL + "-stream", "/stream/v1")):
        entries.append(f"""\
  - model_name: {alias}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream.url}{path}
      api_key: {UPSTREAM_KEY}""")
    return (
        "model_list:\n"
        + "\n".join(entries)
        + f"""
general_settings:
  master_key: {LITELLM_MASTER_KEY}
litellm_settings:
  drop_params: true
  set_verbose: false
  json_logs: false
"""
    )


def litellm(upstream: Upstream, workdir: Path, cpus: set[int]) -> Target:
    cli = ensure_litellm()
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstream))
    port = procs.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "DATABASE_URL"))}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        VIRTUAL_ENV=str(LITELLM_VENV),
        PATH=f"{cli.parent}:{env.get('PATH', '')}",
    )
    proc = procs.start(
        "litellm",
        [
            str(cli),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir / "litellm.log",
        env=env,
        cwd=workdir,
        cpus=cpus,
    )
    t = Target(
        "litellm",
        f"http://127.0.0.1:{port}",
        {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        "/v1/chat/completions",
        MODEL,
        "/v1/chat/completions",
        MODEL + "-stream",
        proc,
        port,
    )
    procs.wait_http(t.base_url + "/health/liveliness", proc, timeout_s=180)
    t.worker_pid = procs.listening_pid(proc.pid, port)
    return t


# --- Portkey's open-source gateway (Node) -------------------------------------------------


def ensure_portkey() -> Path:
    """Install the pinned gateway into bench/.portkey with npm on first use; returns its
    entry script. Install scripts are skipped (its only one applies patches to its own
    development tree, which the published package does not ship)."""
    entry = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    stamp = PORTKEY_DIR / "bench-spec.txt"
    if entry.exists() and stamp.exists() and stamp.read_text().strip() == PORTKEY_SPEC:
        return entry
    print(f"installing {PORTKEY_SPEC} into bench/.portkey (first use only)...", flush=True)
    PORTKEY_DIR.mkdir(exist_ok=True)
    (PORTKEY_DIR / "package.json").write_text('{"name": "keyfob-bench-portkey", "private": true}\n')
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", PORTKEY_SPEC],
        cwd=PORTKEY_DIR,
        check=True,
        capture_output=True,
        timeout=600,
    )
    stamp.write_text(PORTKEY_SPEC + "\n")
    return entry


def portkey(upstream: Upstream, workdir: Path, cpus: set[int]) -> Target:
    """``node start-server.js --headless``: one Node process. Each call names the provider
    (``openai``) and the upstream (``x-portkey-custom-host``, the nginx path); the
    upstream key travels as the bearer, as Portkey forwards it."""
    entry = ensure_portkey()
    port = procs.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTKEY", "NODE_"))}
    env.update(NODE_ENV="production")
    proc = procs.start(
        "portkey",
        ["node", str(entry), f"--port={port}", "--headless"],
        workdir / "portkey.log",
        env=env,
        cwd=workdir,
        cpus=cpus,
    )
    chat = Target(
        "portkey",
        f"http://127.0.0.1:{port}",
        {
            "Authorization": f"Bearer {UPSTREAM_KEY}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": upstream.url + "/v1",
        },
        "/v1/chat/completions",
        MODEL,
        "/v1/chat/completions",
        MODEL,
        proc,
        port,
    )
    # streams go to nginx's SSE path, which Portkey is told in the custom host
    chat.stream_headers = {**chat.headers, "x-portkey-custom-host": upstream.url + "/stream/v1"}
    chat.no_streams = PORTKEY_NO_STREAMS
    procs.wait_http(chat.base_url + "/", proc, timeout_s=60)
    chat.worker_pid = procs.listening_pid(proc.pid, port)
    return chat


# --- TensorZero's gateway (Rust, from its wheel) ------------------------------------------


def ensure_tensorzero() -> Path:
    """Create bench/.venv-tensorzero with the pinned wheel on first use; its python."""
    py = TENSORZERO_VENV / "bin" / "python"
    stamp = TENSORZERO_VENV / "bench-spec.txt"
    if py.exists() and stamp.exists() and stamp.read_text().strip() == TENSORZERO_SPEC:
        return py
    print(f"creating bench/.venv-tensorzero with {TENSORZERO_SPEC} (first use only)...", flush=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TENSORZERO_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", TENSORZERO_SPEC], check=True)
    stamp.write_text(TENSORZERO_SPEC + "\n")
    return py


def tensorzero_config(upstream: Upstream) -> str:
    """Two models (chat and stream paths of nginx) through TensorZero's ``openai``
    provider; no observability store, no usage analytics (nothing leaves the machine)."""
    out = [
        "[gateway]",
        "disable_pseudonymous_usage_analytics = true",
        "[gateway.observability]",
        "enabled = false",
    ]
    for alias, path in ((MODEL, "/v1/"), (MODEL + "-stream", "/stream/v1/")):
        out += [
            f'[models."{alias}"]',
            'routing = ["nginx"]',
            f'[models."{alias}".providers.nginx]',
            'type = "openai"',
            f'model_name = "{MODEL}"',
            f'api_base = "{upstream.url}{path}"',
            'api_key_location = "env::BENCH_UPSTREAM_KEY"',
        ]
    return "\n".join(out) + "\n"


def tensorzero(upstream: Upstream, workdir: Path, cpus: set[int]) -> Target:
    py = ensure_tensorzero()
    config = workdir / "tensorzero.toml"
    config.write_text(tensorzero_config(upstream))
    portfile = workdir / "tensorzero.url"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENSORZERO", "RUST_LOG"))}
    env.update(BENCH_UPSTREAM_KEY=UPSTREAM_KEY, RUST_LOG="error", VIRTUAL_ENV=str(TENSORZERO_VENV))
    proc = procs.start(
        "tensorzero",
        [str(py), str(BENCH_DIR / "tensorzero_gateway.py"), str(config), str(portfile)],
        workdir / "tensorzero.log",
        env=env,
        cwd=workdir,
        cpus=cpus,
    )
    deadline = time.monotonic() + 60
    while not portfile.exists():
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"tensorzero did not start:\n{proc.log_tail()}")
        time.sleep(0.2)
    base = portfile.read_text().strip()  # http://127.0.0.1:PORT/openai/v1
    root, _, _ = base.partition("/openai/v1")
    port = int(root.rsplit(":", 1)[1])
    t = Target(
        "tensorzero",
        root,
        {},
        "/openai/v1/chat/completions",
        f"tensorzero::model_name::{MODEL}",
        "/openai/v1/chat/completions",
        f"tensorzero::model_name::{MODEL}-stream",
        proc,
        port,
    )
    t.worker_pid = proc.pid
    return t
