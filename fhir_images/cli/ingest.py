"""``fhir-images ingest``: decide whether images may go into the record; write the outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .._context import ImageKind, Maker
from .._exceptions import BadInput, FhirImagesError
from .._ingest import ingest, load_case, parse_consent, parse_context, parse_request
from .._inputs import load_structured
from .._requests import ImageRequest, load_request
from ..policy import Outcome
from ._common import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_HELD,
    EXIT_NOT_DELIVERED,
    EXIT_OK,
    EXIT_REFUSED,
    client_for,
    json_option,
    label_text,
    outbox_for,
    outbox_option,
    policy_option,
    settings,
    worst,
)
from .server import deliver

CASE_SUFFIXES = {".yaml", ".yml", ".json"}
OUTCOME_EXIT = {Outcome.STORE: EXIT_OK, Outcome.HOLD: EXIT_HELD, Outcome.REFUSE: EXIT_REFUSED}

_CONTEXT_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--patient", "patient", {"help": "Patient reference, e.g. Patient/123."}),
    ("--birth-date", "birth_date", {"help": "Patient's birth date (YYYY-MM-DD)."}),
    ("--captured", "captured", {"help": "When the image was made (ISO 8601); default now."}),
    (
        "--made-by",
        "made_by",
        {"type": click.Choice([m.value for m in Maker]), "help": "Who made the image."},
    ),
    (
        "--operator",
        "operator",
        {"help": "Reference to who made it (Practitioner/.., Patient/.., RelatedPerson/..)."},
    ),
    (
        "--kind",
        "kind",
        {
            "type": click.Choice([k.value for k in ImageKind]),
            "help": "What it is; the GMC implicit-consent kinds need no consent.",
        },
    ),
    ("--encounter", "encounter", {"help": "Encounter reference, when known."}),
    ("--purpose", "purpose", {"help": "Clinical relevance and purpose (required to store)."}),
    (
        "--best-interests",
        "best_interests",
        {"help": "For a child: why keeping it is in their best interests."},
    ),
    ("--device-name", "device_name", {"help": "Device used."}),
    ("--recorded-by", "recorded_by", {"help": "Practitioner entering it into the record."}),
    ("--organization", "organization", {"help": "Organization reference."}),
    ("--title", "title", {"help": "A title for the image."}),
]
_SWITCHES = (
    ("--solicited/--unsolicited", "solicited", "Asked for by the clinician, or not."),
    (
        "--intimate/--not-intimate",
        "intimate",
        "Shows an intimate area (unstated = treated as intimate).",
    ),
    (
        "--routine-in-person/--not-routine-in-person",
        "routine_in_person",
        "Would be taken in a normal face-to-face consultation.",
    ),
    ("--remote/--face-to-face", "remote", "From a remote consultation."),
    ("--safeguarding/--no-safeguarding", "safeguarding_concern", "Safeguarding concern."),
)


def _context_options(f: Any) -> Any:
    for flag, dest, kwargs in reversed(_CONTEXT_FLAGS):
        f = click.option(flag, dest, default=None, **kwargs)(f)
    for flag, dest, help_ in _SWITCHES:
        f = click.option(flag, dest, default=None, help=help_)(f)
    return click.option(
        "--body-site",
        "body_site",
        default=None,
        help="SNOMED CT code and/or text: 'CODE', 'CODE|text' or '|text'.",
    )(f)


def _body_site(value: str) -> dict[str, str]:
    code, _, text = value.partition("|")
    return {k: v for k, v in (("code", code.strip()), ("display", text.strip())) if v}


def _context_from(flags: dict[str, Any], base: Any) -> Any:
    if base is not None and not isinstance(base, dict):
        return base  # parse_context says what is wrong with it
    data = dict(base or {})
    for key, value in flags.items():
        if value is not None:
            data[key] = _body_site(value) if key == "body_site" else value
    return data


def _row(label: str, exc: FhirImagesError) -> dict[str, Any]:
    return {
        "file": label,
        "decision": "bad-input" if isinstance(exc, BadInput) else "error",
        "error_type": type(exc).__name__,
        "error": str(exc),
    }


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--context",
    "context_file",
    type=click.Path(path_type=Path),
    help="Clinical context file (YAML/JSON); flags override it.",
)
@click.option(
    "--consent",
    "consent_file",
    type=click.Path(path_type=Path),
    help="Consent record file (YAML/JSON).",
)
@click.option(
    "--request",
    "request_arg",
    default=None,
    help="The clinician's request the image answers: ServiceRequest/ID (read from --server) "
    "or a request file (YAML/JSON, as `request create --out` writes it).",
)
@click.option("--content-type", default=None, help="The type the sender claimed (checked).")
@policy_option("'default', or the case file's")
@outbox_option
@json_option
@click.option(
    "--batch",
    is_flag=True,
    help="Several inputs: exit 0 when every input got a decision (stored, held or refused: "
    "see the output), 2 if any was bad input, 1 on errors.",
)
@click.option(
    "--server",
    default=None,
    help="Deliver what is stored to this FHIR server straight away (else it waits in the outbox).",
)
@_context_options
@click.pass_context
def ingest_cmd(
    ctx: click.Context,
    /,
    paths: tuple[Path, ...],
    server: str | None,
    context_file: Path | None,
    consent_file: Path | None,
    request_arg: str | None,
    content_type: str | None,
    policy_name: str | None,
    outbox_dir: Path | None,
    as_json: bool,
    batch: bool,
    **flags: Any,
) -> None:
    """Decide whether images may go into the record, and write them to the outbox.

    PATHS are images or recordings, with the context given as flags (or --context), or case
    files (.yaml, .yml, .json) that name an image with its context, consent and policy.

    Exit code (one input): 0 stored, 3 held, 4 refused, 2 bad input, 5 not delivered.
    """
    if not paths:
        raise click.UsageError("give image paths or case files")
    outbox = outbox_for(ctx, outbox_dir)
    limits = settings(ctx).limits
    given_request = _request_from(ctx, request_arg, server) if request_arg else None

    rows: list[dict[str, Any]] = []
    codes: list[int] = []
    ready: dict[str, dict[str, Any]] = {}
    for path in paths:
        label = str(path)
        try:
            if path.suffix.lower() in CASE_SUFFIXES:
                case = load_case(path)
                image, context, consent, pack = case.image, case.context, case.consent, case.policy
                request = given_request or case.request
            else:
                base = load_structured(context_file, "context file") if context_file else None
                context = parse_context(_context_from(flags, base))
                consent = (
                    parse_consent(load_structured(consent_file, "consent file"))
                    if consent_file
                    else None
                )
                image, pack, request = path, "default", given_request
            result = ingest(
                image,
                context,
                consent,
                outbox=outbox,
                policy=policy_name or pack,
                claimed_type=content_type,
                limits=limits,
                request=request,
            )
        except FhirImagesError as exc:
            codes.append(EXIT_BAD_INPUT if isinstance(exc, BadInput) else EXIT_ERROR)
            rows.append(_row(label, exc))
            continue
        codes.append(OUTCOME_EXIT[result.decision.outcome])
        rows.append({"file": label, **result.summary()})
        if result.entry is not None and result.entry.state == "ready":
            ready[result.entry.id] = rows[-1]

    if server and ready:
        client = client_for(ctx, server)
        entries = [outbox.get(i) for i in ready]
        for delivered in deliver(client, outbox, entries, 4, as_json):
            ready[delivered.entry_id]["delivery"] = delivered.as_dict()
            if not delivered.delivered:
                codes.append(EXIT_NOT_DELIVERED)

    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        print_table(rows)
    if batch:
        codes = [c for c in codes if c in (EXIT_BAD_INPUT, EXIT_ERROR, EXIT_NOT_DELIVERED)]
    ctx.exit(worst(codes))


def _request_from(ctx: click.Context, value: str, server: str | None) -> ImageRequest:
    """A request named by reference (read from the server) or given as a file."""
    if value.startswith("ServiceRequest/"):
        if not server:
            raise click.UsageError("--request ServiceRequest/ID needs --server to read it from")
        return load_request(client_for(ctx, server), value)
    request = parse_request(load_structured(Path(value), "request file"))
    assert request is not None
    return request


def print_table(rows: list[dict[str, Any]]) -> None:
    console = Console()
    table = Table(show_lines=True)
    for col in ("File", "Decision", "Consent", "Labels", "Reasons"):
        table.add_column(col, overflow="fold")
    colours = {
        "store": "green",
        "hold": "yellow",
        "refuse": "red",
        "bad-input": "magenta",
        "error": "red",
    }
    for row in rows:
        decision = row["decision"]
        shown = {"store": "stored", "hold": "held", "refuse": "refused"}.get(decision, decision)
        if row.get("discarded"):
            shown += " (discarded; a record is kept, without the image)"
        if row.get("duplicate_of"):
            shown += " (already in the outbox or delivered)"
        delivery: dict[str, Any] | None = row.get("delivery")
        if delivery:
            shown += (
                f", sent as {delivery['media']}"
                if delivery["delivered"]
                else f", not sent: {delivery['error_type']}"
            )
        if "error" in row:
            table.add_row(row["file"], f"[{colours[decision]}]{decision}[/]", "", "", row["error"])
            continue
        blocking = [r for r in row["reasons"] if r["outcome"] != "store"]
        reasons = "\n".join(f"{r['rule']}: {r['text']}" for r in blocking) or ", ".join(
            f"{r['rule']} {r['code']}" for r in row["reasons"]
        )
        if row.get("notes"):
            reasons += "\n" + "\n".join(f"Note to complete: {n}" for n in row["notes"])
        table.add_row(
            Path(row["file"]).name,
            f"[{colours[decision]}]{shown}[/]",
            row["consent"],
            label_text(row["security"]),
            reasons,
        )
    console.print(table)


def register(main: click.Group) -> None:
    main.add_command(ingest_cmd)


__all__ = ["print_table", "register"]
