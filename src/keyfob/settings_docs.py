"""docs/SETTINGS.md, written from the settings' own declarations.

``python -m keyfob.settings_docs > docs/SETTINGS.md`` regenerates it; a test fails when
the committed file differs, so a setting cannot be added without its documentation.
"""

from __future__ import annotations

from keyfob.settings import GROUPS, Spec, specs

TITLES = {
    "server": "Server",
    "database": "Database",
    "redis": "Redis",
    "secrets": "Secrets",
    "oauth": "OAuth",
    "gateway": "Gateway",
    "sessions": "Dashboard sessions and logins",
    "operations": "Operations",
}

INTRO = """\
# Settings

Every setting can be given as an environment variable or as a flag of `keyfob serve`
(a flag wins over the variable); `keyfob serve --help` lists the same. Secrets are read
from the variable or from a file named by the variable with `_FILE` appended (one value
per line: a key ring, newest last); their flag names such a file, because a command line
is visible to every user of the machine. Each worker started by `keyfob serve --workers N`
and the app factory (`keyfob.server:app_factory`) read the environment.

This file is generated from `src/keyfob/settings.py` (`python -m keyfob.settings_docs >
docs/SETTINGS.md`); the test suite fails when it is out of date.
"""


def _row(spec: Spec) -> str:
    env = f"`{spec.env}`" + (f"<br>`{spec.file_env}`" if spec.secret else "")
    help_text = spec.help.replace("|", "\\|")
    kind = spec.kind.replace("|", "\\|")
    return f"| {env} | `{spec.flag}` | {kind} | {spec.default_text()} | {help_text} |"


def markdown() -> str:
    parts = [INTRO]
    for group in GROUPS:
        rows = [_row(s) for s in specs() if s.group == group]
        if not rows:
            continue
        parts.append(f"## {TITLES[group]}\n")
        parts.append("| variable | flag | kind | default | what it does |")
        parts.append("|---|---|---|---|---|")
        parts.extend(rows)
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
