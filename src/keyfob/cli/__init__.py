"""The ``keyfob`` command, one module per command group: ``serve``, ``init``,
``providers``, ``models``, ``apps`` (and ``apps_policy``), ``usage``, ``wallet``,
``vault``, ``dev_token``, ``terms``, ``deploy`` (``migrate``, ``setup-link``);
``common`` holds what they share.

``users`` registers ``keyfob users`` and gives every command that acts for a
person its ``--user NAME`` option; it is installed last, once every command exists.
"""

from __future__ import annotations

import typer

from keyfob.cli import (
    apps,
    apps_policy,
    deploy,
    dev_token,
    init,
    models,
    providers,
    serve,
    terms,
    usage,
    users,
    vault,
    wallet,
)
from keyfob.cli.common import err
from keyfob.settings import SettingsError

app = typer.Typer(
    help="Keyfob: bring your own AI account to any app.", no_args_is_help=True, add_completion=False
)

serve.install(app)
app.command("init")(init.init)
app.command("migrate")(deploy.migrate)
app.command("setup-link")(deploy.setup_link)
app.add_typer(providers.app, name="providers")
app.add_typer(models.app, name="models")
app.add_typer(apps.app, name="apps")
app.command("usage")(usage.usage)
app.add_typer(wallet.app, name="wallet")
app.add_typer(vault.app, name="vault")
app.command("dev-token")(dev_token.dev_token)
app.command("terms")(terms.terms)
_ = apps_policy  # registers `apps policy` on apps.app


# `keyfob users ...` and `--user NAME` on the commands that act for a person (after every
# command is registered: it wraps them)
users.install(app)


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # a KEYFOB_* variable no command could use
        err.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
