"""``devassign audit``: the database's consistency, as an operator checks it (and repairs it).

Exits 0 when nothing is found (after ``--fix``: when nothing is left), 1 otherwise, so a cron
job or a monitoring check can branch on it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from devassign.cli.client import CliError
from devassign.cli.inventory import FormatOpt, client
from devassign.cli.output import Format, console, emit

FINDING_COLUMNS = [
    ("check", lambda f: f["check"]),
    ("host", lambda f: f.get("host") or ""),
    ("consumer", lambda f: f.get("consumer") or ""),
    ("what", lambda f: f["message"]),
    ("fix", lambda f: "repaired" if f.get("repaired") else ("--fix" if f["fixable"] else "by hand")),
]


def register(app: typer.Typer) -> None:
    @app.command()
    def audit(
        ctx: typer.Context,
        fix: Annotated[
            bool,
            typer.Option(
                "--fix",
                help="Repair what is safe to repair (counts, overdue reservations); each repair is an event",
            ),
        ] = False,
        down_for: Annotated[
            int, typer.Option(help="Seconds a host must have been silent (a move pending) before it counts")
        ] = 3600,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Check the inventory for inconsistencies (admin): exit 0 when none is found, 1 otherwise."""
        c = client(ctx)
        report = (
            c.post(f"/v1/audit/fix?down_for={down_for}") if fix else c.get("/v1/audit", down_for=down_for)
        )
        findings = report["findings"]
        left = [f for f in findings if not f.get("repaired")]
        if fmt is Format.json:
            emit(report, fmt)
        elif findings:
            emit(findings, fmt, FINDING_COLUMNS, title="audit findings")
        else:
            console.print(f"no inconsistency found ({len(report['checks'])} checks)")
        if left:
            raise CliError(
                f"{len(left)} finding(s) left; see above" if fmt is Format.table else "findings left"
            )
