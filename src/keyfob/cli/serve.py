"""``keyfob serve``: one flag per setting, generated from the settings' declarations."""

from __future__ import annotations

import inspect
import os
from typing import Annotated, Any

import typer

from keyfob.cli.common import console, fail, run
from keyfob.settings import Settings, SettingsError, specs
from keyfob.settings_checks import check_safe


def _serve_parameters() -> list[inspect.Parameter]:
    """One flag per setting, from the settings' own declarations (settings.py): the
    flags, the variables and ``--help`` can never disagree."""
    from keyfob.settings_docs import TITLES

    params = []
    for spec in specs():
        where = f"env {spec.env}" + (f" or {spec.file_env}" if spec.secret else "")
        text = f"{spec.help} ({where}; default {spec.default_text()})"
        panel = TITLES[spec.group]
        if spec.is_bool:
            option = typer.Option(
                f"{spec.flag}/--no-{spec.flag[2:]}",
                help=text,
                rich_help_panel=panel,
                show_default=False,
            )
            hint: Any = Annotated[bool | None, option]
        else:
            metavar = "FILE" if spec.secret else spec.kind.upper().replace(" ", "")
            option = typer.Option(
                spec.flag, help=text, rich_help_panel=panel, show_default=False, metavar=metavar
            )
            hint = Annotated[str | None, option]
        params.append(
            inspect.Parameter(
                spec.name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=None
            )
        )
    return params


def serve(**flags: Any) -> None:
    """Run the server (personal mode: loopback, SQLite in the data dir; hosted mode:
    PostgreSQL, migrated under a lock, with a setup link while there is no owner). Every
    setting is a flag here and a KEYFOB_* variable (docs/SETTINGS.md)."""
    from keyfob.server import create_app

    try:
        settings = Settings.load(flags)
        check_safe(settings)
    except SettingsError as exc:
        raise fail(str(exc)) from None

    def announce(link: str) -> None:
        # The terminal only, never the log: whoever holds this link creates the owner.
        console.print(f"No owner yet. Create one at [bold]{link}[/bold]", soft_wrap=True)
        console.file.flush()

    if settings.mode == "hosted":
        from keyfob.deploy import preflight

        try:
            link = run(lambda: preflight(settings))
        except SettingsError as exc:
            raise fail(str(exc)) from None
        if link is not None:
            announce(link)
    else:
        from keyfob.store import prepare_sqlite_file
        from keyfob.store.metering.writeback import owner_running

        db_file = prepare_sqlite_file(settings.effective_database_url)
        if db_file is not None and owner_running(db_file):
            raise fail(
                f"another keyfob serve is already serving {db_file}; stop it first "
                "(one server per database: it meters calls in memory)"
            )
    console.print(f"Keyfob on [bold]{settings.issuer}[/bold] (data: {settings.data_dir})")
    console.file.flush()
    if settings.workers > 1:
        # Each worker builds its app from the environment (the app factory): hand it
        # every setting resolved here, flags and files included.
        os.environ.update(settings.to_env())
        run_uvicorn(settings, "keyfob.server:app_factory")
        return
    try:
        application = create_app(settings, announce)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    run_uvicorn(settings, application)


def run_uvicorn(settings: Settings, app: Any) -> None:

    from keyfob.logs import uvicorn_log_config

    log_config = uvicorn_log_config(settings.log_level, settings.log_format)
    made: str | None = None
    if isinstance(app, str) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        import tempfile

        # the workers' metrics, shared through files and summed by /metrics
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="keyfob-metrics-")
    try:
        _uvicorn(settings, app, log_config)
    finally:
        if made is not None:
            import shutil

            shutil.rmtree(made, ignore_errors=True)


def _uvicorn(settings: Settings, app: Any, log_config: dict[str, Any] | None) -> None:
    import uvicorn

    uvicorn.run(
        app,
        factory=isinstance(app, str),
        workers=settings.workers if isinstance(app, str) else None,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        # Forwarding headers are believed only from KEYFOB_TRUSTED_PROXIES (guard.py):
        # uvicorn's own default trusts them from 127.0.0.1, i.e. from every local client.
        proxy_headers=False,
        forwarded_allow_ips="",
        # SIGTERM: stop accepting; streams get drain_timeout_s, then Keyfob cuts and
        # settles them (drain.py); this is the hard stop after that.
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
        log_config=log_config if log_config is not None else uvicorn.config.LOGGING_CONFIG,
    )


def install(app: typer.Typer) -> None:
    """Register ``serve`` on ``app`` with one flag per setting."""
    params = _serve_parameters()
    serve.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    serve.__annotations__ = {p.name: p.annotation for p in params}
    app.command("serve")(serve)
