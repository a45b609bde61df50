"""``fhir-images disclose`` and ``approvals``: release images as labels, consent and recorded
approvals allow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import click
from rich.console import Console
from rich.table import Table

from .._approvals import approve, pending_approvals, refuse_approval
from .._lifecycle import disclose
from ..policy.disclosure import Clearance, DisclosureRequest, Purpose, Role
from ._common import (
    EXIT_HELD,
    EXIT_OK,
    EXIT_REFUSED,
    client_for,
    json_option,
    server_option,
)


@click.command("disclose")
@click.option("--patient", required=True, help="Patient reference, e.g. Patient/123.")
@click.option(
    "--purpose",
    required=True,
    type=click.Choice(list(get_args(Purpose))),
    help="Purpose of use (v3-ActReason).",
)
@click.option("--requester", required=True, help="Who asks: Practitioner/.., Patient/.., ...")
@click.option("--role", required=True, type=click.Choice(list(get_args(Role))))
@click.option(
    "--clearance",
    default="N",
    show_default=True,
    type=click.Choice(list(get_args(Clearance))),
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
@server_option
@json_option
@click.pass_context
def disclose_cmd(
    ctx: click.Context,
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
    request = DisclosureRequest.model_validate(
        {
            "purpose": purpose,
            "requester": requester,
            "role": role,
            "clearance": clearance,
            "recipient": recipient,
        }
    )
    client = client_for(ctx, server)
    result = disclose(client, patient, request, out_dir)
    rows = [d.as_dict() for d in result.decisions]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "decisions": rows,
                    "bundle": str(result.bundle_file),
                    "withheld": str(result.withheld_file),
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
            f"release bundle: {result.bundle_file}\nwithheld list: {result.withheld_file}\n"
            f"audit events: {len(result.audit_events)}"
        )
        for media, task in result.approval_requests.items():
            click.echo(f"approval requested for {media}: {task}")
    verdicts = {r["verdict"] for r in rows}
    ctx.exit(
        EXIT_REFUSED if "withhold" in verdicts else EXIT_HELD if "approve" in verdicts else EXIT_OK
    )


@click.group("approvals")
def approvals_group() -> None:
    """Approvals of disclosures that need a clinician (recorded on the server as Tasks)."""


@approvals_group.command("list")
@click.option("--patient", default=None, help="Only this patient's (Patient/..).")
@server_option
@json_option
@click.pass_context
def approvals_list(
    ctx: click.Context, patient: str | None, server: str | None, as_json: bool
) -> None:
    """List the approvals waiting for a clinician."""
    pending = pending_approvals(client_for(ctx, server), patient)
    keys = ("task", "media", "purpose", "requester", "recipient")
    rows = [
        dict(zip(keys, (a.ref, a.media, a.purpose, a.requester, a.recipient), strict=True))
        for a in pending
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in keys:
        table.add_column(col.capitalize(), overflow="fold")
    for r in rows:
        table.add_row(*(str(r[k] or "") for k in keys))
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
@server_option
@click.pass_context
def approvals_approve(
    ctx: click.Context, task_ref: str, by: str, valid_days: int, server: str | None
) -> None:
    """Approve one requested disclosure (not your own request)."""
    a = approve(client_for(ctx, server), task_ref, by=by, valid_days=valid_days)
    click.echo(f"{a.ref} approved by {a.approver} for {a.media} until {a.valid_until}")


@approvals_group.command("refuse")
@click.argument("task_ref")
@click.option("--by", required=True, help="The refusing clinician (Practitioner/..).")
@click.option("--reason", required=True, help="Why.")
@server_option
@click.pass_context
def approvals_refuse(
    ctx: click.Context, task_ref: str, by: str, reason: str, server: str | None
) -> None:
    """Refuse one requested disclosure."""
    a = refuse_approval(client_for(ctx, server), task_ref, by=by, reason=reason)
    click.echo(f"{a.ref} refused")


def register(main: click.Group) -> None:
    main.add_command(disclose_cmd)
    main.add_command(approvals_group)
