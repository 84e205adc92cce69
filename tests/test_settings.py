"""Settings declared once: every field reachable from the environment and from
``keyfob serve`` flags, listed by ``--help`` and in docs/SETTINGS.md (as Datasette's
docs tests check its settings), a strict mode, and the hosted-mode refusals."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keyfob.settings import Settings, SettingsError, Spec, UnsafeSettings, specs
from keyfob.settings_checks import check_safe
from keyfob.settings_docs import markdown
from tests.support import cli, keyfob_env

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MASTER = "mK3vQ9zT1pL8xW2cR7nB4yH6jD0fS5aGuE_-iOkPqZw"  # 43 chars: 32 bytes
SESSION = "sV8kX2mQ9rT4wZ7bN1cL6hJ3pF5dG0aYqUiEoWnMxKe"


def sample(spec: Spec) -> tuple[str, Any]:
    """A value unlike the default, as text and as the field holds it."""
    if spec.choices:
        other = next(c for c in spec.choices if c != spec.default)
        return other, other
    kind = spec.kind
    if spec.is_bool:
        return ("false", False) if spec.default else ("true", True)
    if kind == "integer":
        return "7", 7
    if kind == "number":
        return "7.5", 7.5
    if kind == "list":
        return "10.0.0.0/8, 192.0.2.1", ("10.0.0.0/8", "192.0.2.1")
    if kind == "path":
        return "/srv/keyfob-data", Path("/srv/keyfob-data")
    if spec.name == "database_url":
        return "postgresql://kf@db.internal/keyfob", "postgresql+asyncpg://kf@db.internal/keyfob"
    return "https://value.test/x", "https://value.test/x"


def test_every_setting_is_declared_with_its_names_and_help() -> None:
    found = specs()
    assert len(found) >= 40
    assert len({s.env for s in found}) == len(found)
    assert len({s.flag for s in found}) == len(found)
    for s in found:
        assert s.env.startswith("KEYFOB_") and s.flag.startswith("--"), s
        assert len(s.help) > 10, s.name


@pytest.mark.parametrize("spec", specs(), ids=lambda s: s.name)
def test_every_setting_is_reachable_from_the_environment_and_a_flag(
    spec: Spec, tmp_path: Path
) -> None:
    text, value = sample(spec)
    assert getattr(Settings(), spec.name) != value
    assert getattr(Settings.from_env({spec.env: text}), spec.name) == value
    if spec.secret:  # the flag names a file; so may the variable
        secret_file = tmp_path / "secret"
        secret_file.write_text(text + "\n")
        assert getattr(Settings.load({spec.name: str(secret_file)}, {}), spec.name) == value
        env = {spec.file_env: str(secret_file)}
        assert getattr(Settings.from_env(env), spec.name) == value
    elif spec.is_bool:
        assert getattr(Settings.load({spec.name: value}, {}), spec.name) == value
    else:
        assert getattr(Settings.load({spec.name: text}, {}), spec.name) == value
    # a worker started by --workers reads back what its parent resolved
    made = Settings.from_env({spec.env: text})
    assert getattr(Settings.from_env(made.to_env()), spec.name) == value


def test_the_docs_list_every_setting_as_declared() -> None:
    committed = (ROOT / "docs" / "SETTINGS.md").read_text()
    for s in specs():
        assert f"`{s.env}`" in committed and f"`{s.flag}`" in committed, s.name
    assert committed == markdown(), (
        "docs/SETTINGS.md is out of date: python -m keyfob.settings_docs > docs/SETTINGS.md"
    )


def test_serve_help_lists_every_flag_and_variable(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "keyfob", "serve", "--help"],
        capture_output=True,
        text=True,
        env=keyfob_env(tmp_path, COLUMNS="400"),
        timeout=60,
        check=True,
    ).stdout
    for s in specs():
        assert s.flag in shown, s.flag
        assert s.env in shown, s.env


@pytest.mark.parametrize("mode", ["Hosted", "public", "HOSTED", " hosted2", "host"])
def test_a_mistyped_mode_is_refused_everywhere(mode: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="exactly personal or hosted"):
        Settings.from_env({"KEYFOB_MODE": mode})
    with pytest.raises(SettingsError, match="exactly personal or hosted"):
        Settings(mode=mode)  # type: ignore[arg-type]
    flag = cli(tmp_path, "serve", "--mode", mode, check=False)
    assert flag.returncode == 1 and "exactly personal or hosted" in flag.stderr
    env = cli(tmp_path, "providers", "list", check=False, KEYFOB_MODE=mode)
    assert env.returncode == 1 and "exactly personal or hosted" in env.stderr
    for result in (flag, env):
        assert "Traceback" not in result.stdout + result.stderr


def test_bad_values_are_refused_with_the_variable_or_flag_named() -> None:
    with pytest.raises(SettingsError, match="KEYFOB_PORT is 'eighty'"):
        Settings.from_env({"KEYFOB_PORT": "eighty"})
    with pytest.raises(SettingsError, match="--refresh-token-ttl is '-5'"):
        Settings.load({"refresh_token_ttl_s": "-5"}, {})
    with pytest.raises(SettingsError, match="KEYFOB_DYNAMIC_REGISTRATION is 'maybe'"):
        Settings.from_env({"KEYFOB_DYNAMIC_REGISTRATION": "maybe"})
    with pytest.raises(SettingsError, match="psycopg"):
        Settings.from_env({"KEYFOB_DATABASE_URL": "postgresql+psycopg2://u@h/db"})


def test_secrets_come_from_files_never_from_repr(tmp_path: Path) -> None:
    ring = tmp_path / "master-keys"
    ring.write_text(f"# oldest first\n{MASTER}\n\n{MASTER[::-1]}\n")
    s = Settings.from_env({"KEYFOB_MASTER_KEY_FILE": str(ring), "KEYFOB_SESSION_KEYS": SESSION})
    assert s.master_key == f"{MASTER},{MASTER[::-1]}"
    assert MASTER not in repr(s) and SESSION not in repr(s)
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_env({"KEYFOB_MASTER_KEY_FILE": str(ring), "KEYFOB_MASTER_KEY": MASTER})
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.from_env({"KEYFOB_SESSION_KEYS_FILE": str(tmp_path / "missing")})


def hosted(tmp_path: Path, **more: Any) -> Settings:
    base: dict[str, Any] = {
        "mode": "hosted",
        "data_dir": tmp_path,
        "database_url": "postgresql://kf@127.0.0.1/keyfob",
        "master_key": MASTER,
        "session_keys": SESSION,
        "public_url": "https://keys.example.org",
        "host": "0.0.0.0",
    }
    base.update(more)
    return Settings(**base)


def test_a_complete_hosted_configuration_passes(tmp_path: Path) -> None:
    check_safe(hosted(tmp_path))
    check_safe(hosted(tmp_path, session_keys=f"{SESSION[::-1]},{SESSION}"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"session_keys": None}, "KEYFOB_SESSION_KEYS"),
        ({"master_key": None}, "KEYFOB_MASTER_KEY"),
        ({"database_url": None}, "PostgreSQL"),
        ({"public_url": None}, "KEYFOB_PUBLIC_URL"),
        ({"public_url": "http://keys.example.org"}, "https"),
        ({"session_keys": "too-short-for-a-key"}, "fewer than 32"),
        ({"session_keys": "x" * 48}, "placeholder"),
        ({"session_keys": "change-me-to-a-long-random-string-0123456789"}, "placeholder"),
        ({"session_keys": MASTER}, "must not reuse a master key"),
        ({"master_key": "not-base64-and-not-32-bytes"}, "32-byte"),
        ({"master_key": "A" * 43}, "placeholder"),
        ({"metrics_token": "short"}, "KEYFOB_METRICS_TOKEN"),
        ({"setup_token": "short"}, "16 characters"),
        ({"redis_url": "http://redis:6379"}, "redis://"),
        ({"log_level": "loud"}, "KEYFOB_LOG_LEVEL"),
        ({"workers": 0}, "at least 1"),
    ],
)
def test_unsafe_hosted_configurations_refuse_to_start(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(UnsafeSettings, match=message):
        check_safe(hosted(tmp_path, **change))


def test_personal_mode_is_one_process_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSettings, match="one process"):
        check_safe(Settings(data_dir=tmp_path, workers=2))
    with pytest.raises(UnsafeSettings, match="loopback only"):
        check_safe(Settings(data_dir=tmp_path, host="0.0.0.0"))


def test_a_hosted_serve_without_its_secrets_says_so(tmp_path: Path) -> None:
    result = cli(
        tmp_path,
        "serve",
        "--mode",
        "hosted",
        "--database-url",
        "postgresql://kf@127.0.0.1/keyfob",
        check=False,
    )
    assert result.returncode == 1 and "KEYFOB_MASTER_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def fresh_database() -> Any:
    name = f"keyfob_settings_{secrets.token_hex(5)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_a_plain_postgresql_url_is_accepted(tmp_path: Path, fresh_database: str) -> None:
    made = cli(
        tmp_path,
        "init",
        "--username",
        "owner",
        KEYFOB_DATABASE_URL=fresh_database,
        KEYFOB_PASSWORD="correct horse battery staple",
    )
    assert "Owner owner created" in made.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "keyfob", "providers", "list", "--database-url", fresh_database],
        capture_output=True,
        text=True,
        env=keyfob_env(tmp_path),
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr


#: Variables that are not settings: what one command reads (a password, a provider key)
#: and names in the code or the clients' docs.
NOT_SETTINGS = {
    "KEYFOB_PASSWORD",
    "KEYFOB_PROVIDER_KEY",
    "KEYFOB_CLIENT_SECRET",
    "KEYFOB_HEADERS",
    "KEYFOB_API_ROUTES",
    "KEYFOB_UPSTREAM_ALLOW_PRIVATE",  # another change of issue 12 adds it
}


def test_every_variable_the_docs_name_is_a_setting() -> None:
    import re

    known = {s.env for s in specs()} | {s.file_env for s in specs() if s.secret}
    docs = [ROOT / "README.md", ROOT / "docs" / "DEPLOY.md", *(ROOT / "docs" / "deploy").iterdir()]
    for doc in docs:
        for name in set(re.findall(r"KEYFOB_[A-Z_]*[A-Z]", doc.read_text())):
            assert name in known or name in NOT_SETTINGS, f"{doc.name} names {name}"
