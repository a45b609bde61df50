"""``fhir-images push`` and ``show``: the outbox to the server, and what the server holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .._delivery import VERIFICATIONS, DeliveryResult, Verification, patient_images, push
from .._outbox import Entry, Outbox
from ..fhir import FhirClient
from ._common import (
    EXIT_NOT_DELIVERED,
    EXIT_OK,
    EXIT_REFUSED,
    client_for,
    err,
    json_option,
    label_text,
    outbox_for,
    outbox_option,
    server_option,
)


def deliver(
    client: FhirClient,
    outbox: Outbox,
    entries: list[Entry] | None,
    workers: int,
    as_json: bool,
    verify: Verification = "links",
) -> list[DeliveryResult]:
    todo = entries if entries is not None else list(outbox.entries("ready"))
    show_progress = not as_json and sys.stderr.isatty() and len(todo) > 1
    with Progress(console=err, transient=True, disable=not show_progress) as progress:
        task = progress.add_task("delivering", total=len(todo))
        return push(
            client,
            outbox,
            workers=workers,
            entries=todo,
            on_done=lambda r: progress.advance(task),
            verify=verify,
        )


def _print_deliveries(results: list[DeliveryResult], held: int, as_json: bool) -> None:
    if as_json:
        for r in results:
            click.echo(json.dumps(r.as_dict()))
        return
    table = Table()
    for col in ("Entry", "Result", "Media", "Consent", "Binary", "Notes"):
        table.add_column(col, overflow="fold")
    for r in results:
        status = (
            "[green]delivered[/]"
            if r.delivered
            else f"[red]{'failed for good' if r.state == 'failed' else 'kept'}: {r.error_type}[/]"
        )
        notes = "; ".join(r.notes + ([r.error] if r.error else []))
        table.add_row(r.entry_id, status, r.media or "", r.consent or "", r.binary or "", notes)
    Console().print(table)
    ok = sum(r.delivered for r in results)
    failed = sum(r.state == "failed" for r in results)
    click.echo(
        f"{ok} delivered, {len(results) - ok - failed} kept in the outbox for the next push, "
        f"{failed} failed for good (see 'outbox list --state failed'), {held} held (not sent)"
    )


@click.command("push")
@server_option
@click.option(
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Parallel deliveries (keep-alive connections).",
)
@click.option(
    "--verify",
    type=click.Choice(VERIFICATIONS),
    default="links",
    show_default=True,
    help="What is read back after each delivery: 'full' every byte as well as labels and "
    "links; 'links' labels and links only (the bytes trusted to the server's acknowledgement).",
)
@json_option
@outbox_option
@click.pass_context
def push_cmd(
    ctx: click.Context,
    server: str | None,
    workers: int,
    verify: Verification,
    as_json: bool,
    outbox_dir: Path | None,
) -> None:
    """Deliver every ready outbox entry to the FHIR server (held entries stay).

    Exit code 0 when all were delivered, 5 when some were kept for the next push (each with
    its reason: 'outbox list'), 4 when the server is refused as unsafe for images (see
    'check-server'; everything stays in the outbox).
    """
    outbox = outbox_for(ctx, outbox_dir)
    client = client_for(ctx, server, workers)
    results = deliver(client, outbox, None, workers, as_json, verify)
    _print_deliveries(results, len(list(outbox.entries("held"))), as_json)
    if any(r.error_type == "UnsafeServer" for r in results):
        ctx.exit(EXIT_REFUSED)
    ctx.exit(EXIT_OK if all(r.delivered for r in results) else EXIT_NOT_DELIVERED)


@click.command("show")
@click.option("--patient", required=True, help="Patient reference, e.g. Patient/123.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="Only images with this security label code (e.g. R, V, PHY); repeatable.",
)
@server_option
@json_option
@click.pass_context
def show_cmd(
    ctx: click.Context, patient: str, labels: tuple[str, ...], server: str | None, as_json: bool
) -> None:
    """List a patient's images on the server with their consent state and labels."""
    client = client_for(ctx, server)
    rows = patient_images(client, patient, labels)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("Media", "Created", "Type", "Consent", "Labels"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["media"], r["created"] or "", r["type"] or "", r["consent"], label_text(r["security"])
        )
    Console().print(table)


def register(main: click.Group) -> None:
    main.add_command(push_cmd)
    main.add_command(show_cmd)
