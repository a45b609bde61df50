"""``fhir-images outbox``: list, recheck, retry and discard entries."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .._delivery import retry_failed
from .._ingest import parse_consent, parse_context, parse_request, recheck
from .._inputs import load_structured
from .._outbox import STATES
from ._common import json_option, label_text, outbox_for, outbox_option
from .ingest import OUTCOME_EXIT, print_table


@click.group("outbox")
def outbox_group() -> None:
    """List, recheck, retry and discard outbox entries."""


@outbox_group.command("list")
@click.option("--state", type=click.Choice(list(STATES)), default=None)
@json_option
@outbox_option
@click.pass_context
def outbox_list(
    ctx: click.Context, state: str | None, as_json: bool, outbox_dir: Path | None
) -> None:
    """List entries (no patient identifiers are shown), with the last delivery error."""
    outbox = outbox_for(ctx, outbox_dir)
    rows = [e.meta.summary() for e in outbox.entries(state)]  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("Id", "State", "Type", "Bytes", "Labels", "Waiting on", "Last delivery error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        last = r["last_error"]
        table.add_row(
            r["id"],
            r["state"],
            str(r["media_type"]),
            str(r["size"]),
            label_text(r["security"]),
            ", ".join(r["blocking"]),
            (
                f"{last['type']}"
                + (f" (HTTP {last['status']})" if last.get("status") else "")
                + f", attempt {last['attempt']}, {last['at']}"
                if last
                else ""
            ),
        )
    Console().print(table)


def recheck_entry(
    ctx: click.Context,
    entry_id: str,
    consent_file: Path,
    context_file: Path | None,
    as_json: bool,
    outbox_dir: Path | None,
    request_file: Path | None = None,
) -> None:
    outbox = outbox_for(ctx, outbox_dir)
    consent = parse_consent(load_structured(consent_file, "consent file"))
    context = parse_context(load_structured(context_file, "context file")) if context_file else None
    request = parse_request(load_structured(request_file, "request file")) if request_file else None
    result = recheck(outbox, entry_id, consent, context=context, request=request)
    row = {"file": entry_id, **result.summary()}
    if as_json:
        click.echo(json.dumps(row))
    else:
        print_table([row])
    ctx.exit(OUTCOME_EXIT[result.decision.outcome])


_REQUEST_HELP = "A new request the image answers (a request file), e.g. after one expired."


@outbox_group.command("recheck")
@click.argument("entry_id")
@click.option(
    "--consent",
    "consent_file",
    type=click.Path(path_type=Path),
    required=True,
    help="The newly recorded consent (YAML/JSON).",
)
@click.option(
    "--context",
    "context_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A corrected clinical context, if needed.",
)
@click.option("--request", "request_file", type=click.Path(path_type=Path), help=_REQUEST_HELP)
@json_option
@outbox_option
@click.pass_context
def outbox_recheck(
    ctx: click.Context,
    entry_id: str,
    consent_file: Path,
    context_file: Path | None,
    request_file: Path | None,
    as_json: bool,
    outbox_dir: Path | None,
) -> None:
    """Record consent for a held entry and decide again; it moves to ready if allowed."""
    recheck_entry(ctx, entry_id, consent_file, context_file, as_json, outbox_dir, request_file)


@outbox_group.command("discard")
@click.argument("entry_id")
@click.option("--by", required=True, help="Practitioner reference of the clinician discarding it.")
@click.option("--reason", required=True, help="Why it is discarded.")
@outbox_option
@click.pass_context
def outbox_discard(
    ctx: click.Context, entry_id: str, by: str, reason: str, outbox_dir: Path | None
) -> None:
    """Discard an entry; a record of who, when and why is kept (without the image)."""
    outbox = outbox_for(ctx, outbox_dir)
    outbox.discard(entry_id, by=by, reason=reason)
    click.echo(f"discarded {entry_id}; record kept in {outbox.root / 'discarded'}")


@outbox_group.command("retry")
@click.argument("entry_id")
@outbox_option
@click.pass_context
def outbox_retry(ctx: click.Context, entry_id: str, outbox_dir: Path | None) -> None:
    """Put a failed entry back in ready (after fixing what the server refused)."""
    retry_failed(outbox_for(ctx, outbox_dir), entry_id)
    click.echo(f"{entry_id} is ready again; the next push sends it")


def register(main: click.Group) -> None:
    main.add_command(outbox_group)
