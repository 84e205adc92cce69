"""``keyfob terms``: the provider-terms registry."""

from __future__ import annotations


def terms() -> None:
    """The provider-terms registry: which credentials may serve third-party apps, and why."""
    from rich.table import Table

    from keyfob.cli.common import console
    from keyfob.terms.table import HEADERS, rows

    table = Table(*HEADERS, show_lines=True)
    for credential, verdict, summary, source, checked in rows():
        style = "green" if verdict == "allowed" else "red"
        table.add_row(credential, f"[{style}]{verdict}[/{style}]", summary, source, checked)
    console.print(table)
