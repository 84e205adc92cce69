"""How one setting is read: its names (variable, ``_FILE`` variable, flag), its kind, and
the parsing of text (a variable's or a flag's) into the field's type, with a refusal
that names where the bad value came from. ``settings.py`` declares the fields; this
module reads their metadata (split out so each stays small)."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass
from pathlib import Path
from typing import Any, Literal

#: The modes, exactly (``settings.Mode``).
MODES = ("personal", "hosted")


class SettingsError(ValueError):
    """A setting has a value Keyfob cannot use (a typo, a wrong type): refused at start."""


def normalise_database_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) -> the asyncpg driver Keyfob ships with;
    ``sqlite:///`` -> aiosqlite. Other drivers are refused by name: SQLAlchemy would pick
    psycopg2, which is not installed, and fail with a traceback."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError("KEYFOB_DATABASE_URL is not a URL (postgresql://... or sqlite:///...)")
    lowered = scheme.lower()
    if lowered in ("postgresql", "postgres", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    if lowered in ("sqlite", "sqlite+aiosqlite"):
        return f"sqlite+aiosqlite://{rest}"
    raise SettingsError(
        f"KEYFOB_DATABASE_URL uses {scheme!r}; Keyfob speaks to PostgreSQL through asyncpg "
        "(postgresql://user@host/db) or to a SQLite file (sqlite:///path)"
    )


def mode_error(value: object) -> str:
    return (
        f"the mode is {value!r}: it must be exactly personal or hosted (lower case); "
        "an unknown mode would skip hosted mode's safety checks"
    )


def read_secret_file(path: str, where: str) -> str:
    """A secret from a file: one value per line (blank lines and #-comments skipped),
    joined with commas (a key ring, newest last)."""
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read {path}: {exc.strerror}") from None
    lines = [ln.strip() for ln in text.splitlines()]
    value = ",".join(ln for ln in lines if ln and not ln.startswith("#"))
    if not value:
        raise SettingsError(f"{where}: {path} is empty")
    return value


# --- what each field's metadata says ---------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One setting as the environment, the flags and the docs see it."""

    name: str
    env: str
    flag: str
    help: str
    group: str
    secret: bool
    hint: Any
    default: Any

    @property
    def file_env(self) -> str:
        return self.env + "_FILE"

    @property
    def is_bool(self) -> bool:
        return self.hint is bool

    @property
    def choices(self) -> tuple[str, ...] | None:
        inner = _without_none(self.hint)
        if typing.get_origin(inner) is Literal:
            return tuple(str(a) for a in typing.get_args(inner))
        return None

    @property
    def kind(self) -> str:
        """The value's kind, in words (for the docs and ``--help``)."""
        if self.choices:
            return " | ".join(self.choices)
        if self.secret:
            return "secret"
        inner = _without_none(self.hint)
        if inner in (int, float):
            return "integer" if inner is int else "number"
        if inner is bool:
            return "true/false"
        if typing.get_origin(inner) is tuple:
            return "list"
        if inner is Path:
            return "path"
        return "text"

    def default_text(self) -> str:
        if self.secret and self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if self.default is None or self.default == ():
            return "none"
        return self.render(self.default)

    def read_env(self, env: Mapping[str, str]) -> str | None:
        raw = env.get(self.env)
        raw = raw if raw not in (None, "") else None
        if self.secret:
            path = env.get(self.file_env)
            if path:
                if raw is not None:
                    raise SettingsError(f"set {self.env} or {self.file_env}, not both")
                return read_secret_file(path, self.file_env)
        return raw

    def parse(self, raw: str, where: str) -> Any:
        """Text (a variable's or a flag's) -> the field's type, or a clear refusal."""
        inner = _without_none(self.hint)
        text = raw.strip()
        if self.choices is not None:
            if text not in self.choices:
                if self.name == "mode":
                    raise SettingsError(f"{where}: {mode_error(text)}")
                raise SettingsError(
                    f"{where} is {text!r}: it must be one of {', '.join(self.choices)}"
                )
            return text
        if inner is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{where} is {text!r}: it must be true or false")
        if inner in (int, float):
            try:
                number = int(text) if inner is int else float(text)
            except ValueError:
                raise SettingsError(f"{where} is {text!r}: it must be a {self.kind}") from None
            if number < 0:
                raise SettingsError(f"{where} is {text!r}: it must not be negative")
            return number
        if typing.get_origin(inner) is tuple:
            return tuple(p.strip() for p in text.split(",") if p.strip())
        if inner is Path:
            return Path(text).expanduser()
        if self.name == "database_url":
            return normalise_database_url(text)
        return text

    def render(self, value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _public_name(name: str) -> str:
    return name[:-2] if name.endswith("_s") else name


def spec_of(f: Field[Any], hints: dict[str, Any]) -> Spec:
    meta = f.metadata
    public = _public_name(f.name)
    flag = meta.get("flag") or "--" + public.replace("_", "-")
    if meta.get("secret") and not meta.get("flag"):
        flag += "-file"
    default = f.default_factory() if callable(f.default_factory) else f.default
    return Spec(
        name=f.name,
        env=meta.get("env") or "KEYFOB_" + public.upper(),
        flag=flag,
        help=meta["help"],
        group=meta["group"],
        secret=bool(meta.get("secret")),
        hint=hints[f.name],
        default=meta.get("default_text") or default,
    )
