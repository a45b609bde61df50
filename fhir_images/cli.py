"""The ``fhir-images`` command: a thin shell over the library.

Exit codes (``ingest`` and ``outbox recheck``):
  0  stored (written to the outbox as ready, or already there)
  1  an unexpected error (outbox not writable, ...)
  2  bad input (unreadable or unsupported file, type mismatch, invalid context or consent)
  3  held: not yet allowed into the record (e.g. consent must be confirmed)
  4  refused: must not be stored
  5  stored, but delivery to the server failed; the entry stays in the outbox (``--server``,
     ``push``)
With several inputs the most serious wins, in the order 2, 4, 3, 1, 5, 0.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from . import _codes
from ._approvals import approve, pending_approvals, refuse_approval
from ._delivery import DeliveryResult, patient_images, push, retry_failed
from ._disclosure import DisclosureRequest
from ._exceptions import ActionRefused, BadInput, FhirImagesError
from ._ingest import (
    ingest,
    load_structured,
    parse_consent,
    parse_context,
    recheck,
)
from ._intake import Limits
from ._lifecycle import (
    RetentionSchedule,
    anonymise,
    destroy,
    disclose,
    narrow_consent,
    withdraw_consent,
)
from ._outbox import Entry, Outbox, default_outbox
from ._policy import POLICIES, Outcome
from ._transport import FhirClient
from ._version import __version__

_CASE_SUFFIXES = {".yaml", ".yml", ".json"}
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_HELD, EXIT_REFUSED = 0, 1, 2, 3, 4
EXIT_NOT_DELIVERED = 5
_OUTCOME_EXIT = {Outcome.STORE: EXIT_OK, Outcome.HOLD: EXIT_HELD, Outcome.REFUSE: EXIT_REFUSED}
_PRECEDENCE = [EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_HELD, EXIT_ERROR, EXIT_NOT_DELIVERED, EXIT_OK]

err = Console(stderr=True)


def _worst(codes: list[int]) -> int:
    for code in _PRECEDENCE:
        if code in codes:
            return code
    return EXIT_OK


def _label_text(security: list[dict[str, str]]) -> str:
    short = {_codes.V3_CONFIDENTIALITY: "conf", _codes.LOCAL_SENSITIVITY: "local"}
    return " ".join(
        f"{short[s['system']]}:{s['code']}" if s["system"] in short else s["code"] for s in security
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhir-images")
@click.option("-v", "--verbose", count=True, help="Log progress to stderr (no patient data).")
def main(verbose: int) -> None:
    """Clinical images and recordings into FHIR R4 Media and Consent, with security labels."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


_outbox_option = click.option(
    "--outbox",
    "outbox_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Outbox folder (default $FHIR_IMAGES_OUTBOX or ./fhir-images-outbox).",
)

# ------------------------------------------------------------------------------- ingest

_CONTEXT_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--patient", "patient", {"help": "Patient reference, e.g. Patient/123."}),
    ("--birth-date", "birth_date", {"help": "Patient's birth date (YYYY-MM-DD)."}),
    ("--captured", "captured", {"help": "When the image was made (ISO 8601); default now."}),
    (
        "--made-by",
        "made_by",
        {
            "type": click.Choice(["clinician", "patient", "parent", "relative_or_carer"]),
            "help": "Who made the image.",
        },
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
            "type": click.Choice(
                [
                    "photo",
                    "video",
                    "audio",
                    "xray",
                    "ultrasound",
                    "endoscopy",
                    "pathology_slide",
                    "internal_organ",
                    "organ_function",
                ]
            ),
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


def _context_options(f: Any) -> Any:
    for flag, dest, kwargs in reversed(_CONTEXT_FLAGS):
        f = click.option(flag, dest, default=None, **kwargs)(f)
    for flag, dest, help_ in (
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
    ):
        f = click.option(flag, dest, default=None, help=help_)(f)
    f = click.option(
        "--body-site",
        "body_site",
        default=None,
        help="SNOMED CT code and/or text: 'CODE', 'CODE|text' or '|text'.",
    )(f)
    return f


def _body_site(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    code, _, text = value.partition("|")
    return {k: v for k, v in (("code", code.strip()), ("display", text.strip())) if v}


def _context_from(flags: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    data = dict(base or {})
    for key, value in flags.items():
        if value is not None:
            data[key] = _body_site(value) if key == "body_site" else value
    return data


@main.command("ingest")
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
@click.option("--content-type", default=None, help="The type the sender claimed (checked).")
@click.option(
    "--policy",
    "policy_name",
    default=None,
    type=click.Choice(sorted(POLICIES)),
    help="Policy pack (default: 'default', or the case file's).",
)
@click.option(
    "--outbox",
    "outbox_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Outbox folder (default $FHIR_IMAGES_OUTBOX or ./fhir-images-outbox).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines).")
@click.option(
    "--server",
    default=None,
    help="Deliver what is stored to this FHIR server straight away (else it waits in the outbox).",
)
@_context_options
def ingest_cmd(
    paths: tuple[Path, ...],
    server: str | None,
    context_file: Path | None,
    consent_file: Path | None,
    content_type: str | None,
    policy_name: str | None,
    outbox_dir: Path | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Decide whether images may go into the record, and write them to the outbox.

    PATHS are images or recordings, with the context given as flags (or --context), or case
    files (.yaml, .yml, .json) that name an image with its context, consent and policy.
    """
    if not paths:
        raise click.UsageError("give image paths or case files")
    try:
        outbox = Outbox(outbox_dir or default_outbox())
        limits = Limits.from_env()
    except (FhirImagesError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)

    jobs = [(str(p), ("case" if p.suffix.lower() in _CASE_SUFFIXES else "path", p)) for p in paths]
    rows: list[dict[str, Any]] = []
    codes: list[int] = []
    ready: dict[str, dict[str, Any]] = {}
    for label, (how, where) in jobs:
        try:
            if how == "case":
                image, ctx, consent, pack = _load_case(where)
            else:
                base = load_structured(context_file) if context_file else None
                ctx = parse_context(_context_from(flags, base))
                consent = parse_consent(load_structured(consent_file)) if consent_file else None
                image, pack = where, "default"
            result = ingest(
                image,
                ctx,
                consent,
                outbox=outbox,
                policy=policy_name or pack,
                claimed_type=content_type,
                limits=limits,
            )
        except BadInput as exc:
            codes.append(EXIT_BAD_INPUT)
            rows.append(
                {
                    "file": label,
                    "decision": "bad-input",
                    "error_type": type(exc).__name__,
                    "error": str(exc),
                }
            )
            continue
        except FhirImagesError as exc:
            codes.append(EXIT_ERROR)
            rows.append(
                {
                    "file": label,
                    "decision": "error",
                    "error_type": type(exc).__name__,
                    "error": str(exc),
                }
            )
            continue
        codes.append(_OUTCOME_EXIT[result.decision.outcome])
        rows.append({"file": label, **result.summary()})
        if result.entry is not None and result.entry.state == "ready":
            ready[result.entry.id] = rows[-1]

    if server and ready:
        client = _client(server)
        try:
            entries = [outbox.get(i) for i in ready]
            for delivered in _deliver(client, outbox, entries, 4, as_json):
                row = ready[delivered.entry_id]
                row["delivery"] = delivered.as_dict()
                if not delivered.delivered:
                    codes.append(EXIT_NOT_DELIVERED)
        except FhirImagesError as exc:
            err.print(f"[red]error:[/red] {exc}; the images stay in the outbox")
            codes.append(EXIT_NOT_DELIVERED)

    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        _print_table(rows)
    sys.exit(_worst(codes))


def _load_case(path: Path) -> tuple[Path, Any, Any, str]:
    data = load_structured(path)
    if not isinstance(data, dict) or "image" not in data or "context" not in data:
        raise BadInputCase(
            f"{path}: a case file needs 'image' and 'context' (and optional 'consent', 'policy')"
        )
    image = (path.parent / str(data["image"])).resolve()
    consent = data.get("consent")
    if isinstance(consent, str):
        consent = load_structured(path.parent / consent)
    return (
        image,
        parse_context(data["context"]),
        parse_consent(consent),
        str(data.get("policy", "default")),
    )


class BadInputCase(BadInput):
    """A case file without the required keys."""


def _print_table(rows: list[dict[str, Any]]) -> None:
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
        if row.get("duplicate_of"):
            shown += " (already in outbox)"
        delivery = row.get("delivery")
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
        table.add_row(
            Path(row["file"]).name,
            f"[{colours[decision]}]{shown}[/]",
            row["consent"],
            _label_text(row["security"]),
            reasons,
        )
    console.print(table)


# ------------------------------------------------------------------------------- outbox


@main.group("outbox")
def outbox_group() -> None:
    """List, recheck and discard outbox entries."""


@outbox_group.command("list")
@click.option("--state", type=click.Choice(["ready", "held", "failed"]), default=None)
@click.option("--json", "as_json", is_flag=True)
@_outbox_option
def outbox_list(state: str | None, as_json: bool, outbox_dir: Path | None) -> None:
    """List entries (no patient identifiers are shown)."""
    outbox = Outbox(outbox_dir or default_outbox())
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
            _label_text(r["security"]),
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
@click.option("--json", "as_json", is_flag=True)
@_outbox_option
def outbox_recheck(
    entry_id: str,
    consent_file: Path,
    context_file: Path | None,
    as_json: bool,
    outbox_dir: Path | None,
) -> None:
    """Record consent for a held entry and decide again; it moves to ready if allowed."""
    outbox = Outbox(outbox_dir or default_outbox())
    try:
        consent = parse_consent(load_structured(consent_file))
        ctx = parse_context(load_structured(context_file)) if context_file else None
        result = recheck(outbox, entry_id, consent, context=ctx)
    except BadInput as exc:
        err.print(f"[magenta]bad input:[/magenta] {exc}")
        sys.exit(EXIT_BAD_INPUT)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    row = {"file": entry_id, **result.summary()}
    if as_json:
        click.echo(json.dumps(row))
    else:
        _print_table([row])
    sys.exit(_OUTCOME_EXIT[result.decision.outcome])


@outbox_group.command("discard")
@click.argument("entry_id")
@click.option("--by", required=True, help="Practitioner reference of the clinician discarding it.")
@click.option("--reason", required=True, help="Why it is discarded.")
@_outbox_option
def outbox_discard(entry_id: str, by: str, reason: str, outbox_dir: Path | None) -> None:
    """Discard an entry; a record of who, when and why is kept (without the image)."""
    outbox = Outbox(outbox_dir or default_outbox())
    try:
        outbox.discard(entry_id, by=by, reason=reason)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(f"discarded {entry_id}; record kept in {outbox.root / 'discarded'}")


@outbox_group.command("retry")
@click.argument("entry_id")
@_outbox_option
def outbox_retry(entry_id: str, outbox_dir: Path | None) -> None:
    """Put a failed entry back in ready (after fixing what the server refused); push sends it."""
    outbox = Outbox(outbox_dir or default_outbox())
    try:
        retry_failed(outbox, entry_id)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(f"{entry_id} is ready again; the next push sends it")


# ------------------------------------------------------------------------ server side

_server_option = click.option(
    "--server", "server", default=None, help="FHIR base URL (default $FHIR_BASE_URL)."
)


def _client(server: str | None, workers: int = 4) -> FhirClient:
    try:
        return FhirClient.from_env(server, pool_size=max(workers, 1))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _deliver(
    client: FhirClient, outbox: Outbox, entries: list[Entry] | None, workers: int, as_json: bool
) -> list[DeliveryResult]:
    todo = entries if entries is not None else list(outbox.entries("ready"))
    show_progress = not as_json and sys.stderr.isatty() and len(todo) > 1
    with Progress(console=err, transient=True, disable=not show_progress) as progress:
        task = progress.add_task("delivering", total=len(todo))
        results = push(
            client, outbox, workers=workers, entries=todo, on_done=lambda r: progress.advance(task)
        )
    return results


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


@main.command("push")
@_server_option
@click.option(
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Parallel deliveries (keep-alive connections).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per entry.")
@_outbox_option
def push_cmd(server: str | None, workers: int, as_json: bool, outbox_dir: Path | None) -> None:
    """Deliver every ready outbox entry to the FHIR server (held entries stay).

    Exit code 0 when all were delivered, 5 when some were kept for the next push.
    """
    outbox = Outbox(outbox_dir or default_outbox())
    client = _client(server, workers)
    results = _deliver(client, outbox, None, workers, as_json)
    _print_deliveries(results, len(list(outbox.entries("held"))), as_json)
    sys.exit(EXIT_OK if all(r.delivered for r in results) else EXIT_NOT_DELIVERED)


@main.command("show")
@click.option("--patient", required=True, help="Patient reference, e.g. Patient/123.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="Only images with this security label code (e.g. R, V, PHY); repeatable.",
)
@_server_option
@click.option("--json", "as_json", is_flag=True)
def show_cmd(patient: str, labels: tuple[str, ...], server: str | None, as_json: bool) -> None:
    """List a patient's images on the server with their consent state and labels."""
    client = _client(server)
    try:
        rows = patient_images(client, patient, labels)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("Media", "Created", "Type", "Consent", "Labels"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["media"],
            r["created"] or "",
            r["type"] or "",
            r["consent"],
            _label_text(r["security"]),
        )
    Console().print(table)


# ------------------------------------------------------------- disclosure and lifecycle


@main.command("disclose")
@click.option("--patient", required=True, help="Patient reference, e.g. Patient/123.")
@click.option(
    "--purpose",
    required=True,
    type=click.Choice(list(_codes.PURPOSES_OF_USE)),
    help="Purpose of use (v3-ActReason).",
)
@click.option("--requester", required=True, help="Who asks: Practitioner/.., Patient/.., ...")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["clinician", "patient", "family", "legal", "researcher", "teacher"]),
)
@click.option(
    "--clearance",
    default="N",
    show_default=True,
    type=click.Choice(["N", "R", "V"]),
    help="Highest confidentiality the requester may see.",
)
@click.option("--recipient", default=None, help="Who receives it, if not the requester.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for release-bundle.json and withheld.json.",
)
@_server_option
@click.option("--json", "as_json", is_flag=True)
def disclose_cmd(
    patient: str,
    purpose: str,
    requester: str,
    role: str,
    clearance: str,
    recipient: str | None,
    out_dir: Path,
    server: str | None,
    as_json: bool,
) -> None:
    """Release a patient's images for a purpose, as their labels and consent allow.

    Images that need a clinician's approval are released only against an approval recorded
    on the server ('fhir-images approvals approve'); without one, an approval is requested.
    Exit 0 when everything was released, 3 when some images wait for approval, 4 when some
    were withheld.
    """
    client = _client(server)
    try:
        request = DisclosureRequest.model_validate(
            {
                "purpose": purpose,
                "requester": requester,
                "role": role,
                "clearance": clearance,
                "recipient": recipient,
            }
        )
    except ValidationError as exc:
        err.print(f"[magenta]bad input:[/magenta] {_first_error(exc)}")
        sys.exit(EXIT_BAD_INPUT)
    try:
        result = disclose(client, patient, request, out_dir)
    except ActionRefused as exc:
        err.print(f"[red]refused:[/red] {exc}")
        sys.exit(EXIT_REFUSED)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    rows = [d.as_dict() for d in result.decisions]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "decisions": rows,
                    "bundle": str(result.bundle),
                    "withheld": str(result.withheld),
                    "audit_events": result.audit_events,
                    "approval_requests": result.approval_requests,
                },
                indent=2,
            )
        )
    else:
        table = Table()
        for col in ("Media", "Conf.", "Verdict", "Why"):
            table.add_column(col, overflow="fold")
        colours = {"release": "green", "approve": "yellow", "withhold": "red"}
        for r in rows:
            table.add_row(
                r["media"],
                r["confidentiality"],
                f"[{colours[r['verdict']]}]{r['verdict']}[/]",
                "\n".join(r["reasons"]),
            )
        Console().print(table)
        click.echo(
            f"release bundle: {result.bundle}\nwithheld list: {result.withheld}\n"
            f"audit events: {len(result.audit_events)}"
        )
        for media, task in result.approval_requests.items():
            click.echo(f"approval requested for {media}: {task}")
    verdicts = {r["verdict"] for r in rows}
    sys.exit(
        EXIT_REFUSED if "withhold" in verdicts else EXIT_HELD if "approve" in verdicts else EXIT_OK
    )


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"


@main.group("consent")
def consent_group() -> None:
    """Confirm, withdraw or narrow consent."""


@consent_group.command("confirm")
@click.argument("entry_id")
@click.option("--consent", "consent_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
@_outbox_option
@click.pass_context
def consent_confirm(
    ctx: click.Context, entry_id: str, consent_file: Path, as_json: bool, outbox_dir: Path | None
) -> None:
    """Record confirmed consent for a held image; it moves to ready if now allowed."""
    ctx.invoke(
        outbox_recheck,
        entry_id=entry_id,
        consent_file=consent_file,
        context_file=None,
        as_json=as_json,
        outbox_dir=outbox_dir,
    )


_by_reason = [
    click.option("--by", required=True, help="Practitioner reference of who records this."),
    click.option("--reason", required=True, help="Why."),
]


def _with_by_reason(f: Any) -> Any:
    for option in reversed(_by_reason):
        f = option(f)
    return f


@consent_group.command("withdraw")
@click.argument("consent_ref")
@_with_by_reason
@_server_option
def consent_withdraw(consent_ref: str, by: str, reason: str, server: str | None) -> None:
    """The patient withdraws a consent: it becomes inactive and its images stop being shared."""

    def act(client: FhirClient) -> None:
        change = withdraw_consent(client, consent_ref, by=by, reason=reason)
        if change.nothing_changed:
            click.echo(
                "no active consent for that image: nothing was changed "
                f"(already inactive: {', '.join(change.unchanged) or 'none'})"
            )
        else:
            click.echo(f"withdrawn: {', '.join(change.changed)}")

    _run_action(act, server, "")


@consent_group.command("narrow")
@click.argument("consent_ref")
@click.option(
    "--deny",
    "deny",
    multiple=True,
    required=True,
    type=click.Choice(["second_opinion", "teaching", "research"]),
    help="A permission to turn into a refusal; repeatable.",
)
@_with_by_reason
@_server_option
def consent_narrow(
    consent_ref: str, deny: tuple[str, ...], by: str, reason: str, server: str | None
) -> None:
    """Turn some permissions of a consent into refusals."""

    def act(client: FhirClient) -> None:
        change = narrow_consent(client, consent_ref, deny=deny, by=by, reason=reason)
        if change.nothing_changed:
            click.echo("no active consent permits that any more: nothing was changed")
        else:
            click.echo(f"narrowed (no {', '.join(deny)}): {', '.join(change.changed)}")

    _run_action(act, server, "")


def _run_action(action: Any, server: str | None, done: str) -> None:
    client = _client(server)
    try:
        action(client)
    except ActionRefused as exc:
        err.print(f"[red]refused:[/red] {exc}")
        sys.exit(EXIT_REFUSED)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    if done:
        click.echo(done)


@main.command("destroy")
@click.argument("media_ref")
@_with_by_reason
@click.option(
    "--record-type",
    default="hospital",
    show_default=True,
    help="Record type in the retention schedule (hospital, gp, mental_health, maternity).",
)
@click.option(
    "--schedule",
    default="england",
    show_default=True,
    help="Retention schedule name (data shipped in the package).",
)
@click.option(
    "--last-treatment",
    default=None,
    help="Date of last treatment (default: the image's creation date).",
)
@_server_option
def destroy_cmd(
    media_ref: str,
    by: str,
    reason: str,
    record_type: str,
    schedule: str,
    last_treatment: str | None,
    server: str | None,
) -> None:
    """Destroy an image (Media, Binary, Consent, Provenance) if retention allows; audited.

    Exit 4 when the retention schedule or a legal hold says keep it.
    """
    from datetime import date

    try:
        last = date.fromisoformat(last_treatment) if last_treatment else None
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--last-treatment") from None

    def act(client: FhirClient) -> None:
        result = destroy(
            client,
            media_ref,
            by=by,
            reason=reason,
            record_type=record_type,
            schedule=RetentionSchedule.load(schedule),
            last_treatment=last,
        )
        click.echo(f"deleted {', '.join(result.deleted)}; audit: {result.audit_event}")

    _run_action(act, server, f"{media_ref} destroyed")


@main.command("anonymise")
@click.argument("media_ref")
@click.option(
    "--purpose", default="TRAIN", show_default=True, type=click.Choice(["TRAIN", "HRESCH"])
)
@click.option("--by", required=True, help="Practitioner reference of who makes the copy.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@_server_option
def anonymise_cmd(media_ref: str, purpose: str, by: str, out_dir: Path, server: str | None) -> None:
    """An anonymised copy for teaching or research, only if the consent permits it."""

    def act(client: FhirClient) -> None:
        copy = anonymise(client, media_ref, out_dir, purpose=purpose, by=by)
        click.echo(f"anonymised copy: {copy.image} ({copy.media.name})")

    _run_action(
        act, server, "review the copy before use: the picture itself may identify the patient"
    )


# ------------------------------------------------------------------------------ the hook


@main.group("hook")
def hook_group() -> None:
    """The server hook: a service that labels images arriving on the FHIR server by other routes.

    The shared secret comes from FHIR_IMAGES_HOOK_SECRET (never from the command line).
    """


def _hook_secret() -> str:
    import os

    secret = os.environ.get("FHIR_IMAGES_HOOK_SECRET", "")
    if len(secret) < 16:
        raise click.UsageError("set FHIR_IMAGES_HOOK_SECRET to a secret of 16 characters or more")
    return secret


@hook_group.command("serve")
@_server_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--queue-size", default=1000, show_default=True, type=click.IntRange(1, 100000))
def hook_serve(server: str | None, host: str, port: int, workers: int, queue_size: int) -> None:
    """Run the labelling service (GET /health; the server calls PUT /hook/{type}/{id})."""
    import uvicorn

    from ._hook import HookService

    service = HookService(
        _client(server, workers), _hook_secret(), workers=workers, queue_size=queue_size
    )
    uvicorn.run(
        service.app,
        host=host,
        port=port,
        log_level="warning",
        limit_concurrency=256,
        timeout_keep_alive=5,
    )


@hook_group.command("install")
@_server_option
@click.option(
    "--endpoint",
    required=True,
    help="Base URL of the hook service as the FHIR server reaches it, e.g. http://127.0.0.1:8765",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for 'active'.")
def hook_install(server: str | None, endpoint: str, timeout: float) -> None:
    """Create the Subscriptions (idempotent) and wait until the server reports them active."""
    from ._hook import install_subscriptions

    client = _client(server)
    try:
        refs = install_subscriptions(client, endpoint, _hook_secret(), timeout=timeout)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    click.echo("active: " + ", ".join(refs))


# ------------------------------------------------------------------------------ approvals


@main.group("approvals")
def approvals_group() -> None:
    """Approvals of disclosures that need a clinician (recorded on the server as Tasks)."""


@approvals_group.command("list")
@click.option("--patient", default=None, help="Only this patient's (Patient/..).")
@_server_option
@click.option("--json", "as_json", is_flag=True)
def approvals_list(patient: str | None, server: str | None, as_json: bool) -> None:
    """List the approvals waiting for a clinician."""
    client = _client(server)
    try:
        pending = pending_approvals(client, patient)
    except FhirImagesError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(EXIT_ERROR)
    rows = [
        {
            "task": a.ref,
            "media": a.media,
            "purpose": a.purpose,
            "requester": a.requester,
            "recipient": a.recipient,
        }
        for a in pending
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("Task", "Media", "Purpose", "Requester", "Recipient"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            *(str(r[k] or "") for k in ("task", "media", "purpose", "requester", "recipient"))
        )
    Console().print(table)


@approvals_group.command("approve")
@click.argument("task_ref")
@click.option("--by", required=True, help="The approving clinician (Practitioner/..).")
@click.option(
    "--valid-days",
    default=30,
    show_default=True,
    type=click.IntRange(1, 365),
    help="How long the approval may be used (once).",
)
@_server_option
def approvals_approve(task_ref: str, by: str, valid_days: int, server: str | None) -> None:
    """Approve one requested disclosure (not your own request)."""

    def act(client: FhirClient) -> None:
        a = approve(client, task_ref, by=by, valid_days=valid_days)
        click.echo(f"{a.ref} approved by {a.approver} for {a.media} until {a.valid_until}")

    _run_action(act, server, "")


@approvals_group.command("refuse")
@click.argument("task_ref")
@click.option("--by", required=True, help="The refusing clinician (Practitioner/..).")
@click.option("--reason", required=True, help="Why.")
@_server_option
def approvals_refuse(task_ref: str, by: str, reason: str, server: str | None) -> None:
    """Refuse one requested disclosure."""

    def act(client: FhirClient) -> None:
        a = refuse_approval(client, task_ref, by=by, reason=reason)
        click.echo(f"{a.ref} refused")

    _run_action(act, server, "")


@main.command("policies")
def policies_cmd() -> None:
    """List the policy packs."""
    for name, pack in sorted(POLICIES.items()):
        click.echo(f"{name}: {pack.description}")


if __name__ == "__main__":  # pragma: no cover
    main()
