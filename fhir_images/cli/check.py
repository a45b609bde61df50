"""``fhir-images check-server``: what a FHIR server really does, found by trying it."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .._exceptions import IncompatibleServer
from ..fhir.probe import ServerReport, profile_from_report
from ._common import EXIT_OK, EXIT_REFUSED, client_for, err

#: (field of the report, what it means) in the order shown
ROWS: tuple[tuple[str, str], ...] = (
    ("fhir_version", "FHIR version"),
    ("software", "software"),
    ("labels_kept_on_create", "labels kept as sent on create"),
    ("label_extensions_kept", "label extensions (DS4P) kept"),
    ("meta_operations", "$meta-add / $meta-delete"),
    ("put_labels", "PUT and meta.security"),
    ("put_replace_header", "a header makes PUT replace labels"),
    ("json_patch_labels", "JSON Patch of meta adds and removes labels"),
    ("stale_if_match_status", "stale If-Match answered with"),
    ("transaction", "transactions"),
    ("conditional_create", "conditional create (ifNoneExist) matches on resend"),
    ("urn_in_reference", "urn:uuid resolved in references"),
    ("urn_in_attachment_url", "urn:uuid resolved in Attachment.url"),
    ("security_search", "_security and _security:not searches applied"),
    ("total_by_default", "search total without _total=accurate"),
    ("binary_raw_upload", "raw POST /Binary"),
    ("binary_raw_read", "Binary read as raw bytes"),
    ("binary_json_read", "Binary read as FHIR JSON"),
    ("binary_operations", "$binary-access-write / -read"),
    ("subscriptions", "subscriptions acted on"),
    ("audit_event_create", "accepts AuditEvents from clients"),
    ("validate_operation", "$validate"),
    ("snapshot_operation", "$snapshot"),
    ("delete_missing_in_transaction", "DELETE of a missing id inside a transaction succeeds"),
    ("referential_integrity", "references to missing resources refused"),
)


def _cell(report: ServerReport, name: str) -> str:
    value: Any = getattr(report, name)
    if name == "software":
        return f"{report.software} {report.software_version}".strip()
    if name == "put_replace_header" and report.put_labels == "replace":
        return "not needed"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "not found out"
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return str(value)


def _strategy(report: ServerReport) -> dict[str, str]:
    try:
        profile = profile_from_report(report)
    except IncompatibleServer as exc:  # shown, not raised: the report is the answer
        return {"labels": f"none ({exc})"}
    return {
        "labels": type(profile.labels).__name__,
        "bytes in": profile.binary_write.operation or "inline base64 in the transaction",
        "bytes out": profile.binary_read.operation or "plain read (raw, or JSON streamed)",
        "subscriptions": profile.subscriptions.name,
        "audit": "on the server" if profile.audit_on_server else "FHIR_IMAGES_AUDIT needed",
    }


@click.command("check-server")
@click.option(
    "--server",
    "servers",
    multiple=True,
    help="FHIR base URL (default $FHIR_BASE_URL); repeat to compare servers.",
)
@click.option("--json", "as_json", is_flag=True, help="The reports as JSON.")
@click.option("--markdown", is_flag=True, help="One Markdown table, a column per server.")
@click.pass_context
def check_server_cmd(
    ctx: click.Context, servers: tuple[str, ...], as_json: bool, markdown: bool
) -> None:
    """Probe a server on resources made for the purpose (tagged, deleted afterwards, never
    patient data) and report what it does; the report is cached and chooses how fhir-images
    writes to it. Exit 0 when it is safe for sensitive images, 4 when it is not."""
    clients = [client_for(ctx, s) for s in (servers or (None,))]
    reports = [c.report(fresh=True) for c in clients]
    unsafe = {
        r.base_url: [(n, why) for n, why in r.risks() if n not in c.accept_risks]
        for c, r in zip(clients, reports, strict=True)
    }
    if as_json:
        out = [
            {**r.as_dict(), "strategy": _strategy(r), "risks": [n for n, _ in unsafe[r.base_url]]}
            for r in reports
        ]
        click.echo(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    elif markdown:
        names = [_cell(r, "software") or r.base_url for r in reports]
        click.echo("| | " + " | ".join(names) + " |")
        click.echo("|---|" + "---|" * len(reports))
        for field, label in ROWS[2:]:
            click.echo(f"| {label} | " + " | ".join(_cell(r, field) for r in reports) + " |")
    else:
        for r in reports:
            table = Table(title=f"{r.base_url} ({_cell(r, 'software')}, FHIR {r.fhir_version})")
            table.add_column("behaviour")
            table.add_column("found")
            for field, label in ROWS[2:]:
                table.add_row(label, _cell(r, field))
            for what, how in _strategy(r).items():
                table.add_row(f"[bold]writes: {what}[/]", how)
            Console().print(table)
            for note in r.notes:
                err.print(f"note: {note}", markup=False)
    for base, risks in unsafe.items():
        for name, why in risks:
            err.print(f"refused: {base}: {why} [{name}]", markup=False)
    ctx.exit(EXIT_REFUSED if any(unsafe.values()) else EXIT_OK)


def register(main: click.Group) -> None:
    main.add_command(check_server_cmd)
