"""``fhir-images destroy``, ``anonymise`` and ``policies``."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from .._lifecycle import anonymise, destroy
from ..policy import POLICIES, RetentionSchedule
from ..policy.lifecycle import ANONYMISATION_PURPOSES
from ._common import by_reason, client_for, server_option, settings


@click.command("destroy")
@click.argument("media_ref")
@by_reason
@click.option(
    "--record-type",
    default="hospital",
    show_default=True,
    help="Record type in the retention schedule (hospital, gp, mental_health, maternity).",
)
@click.option(
    "--schedule",
    default=None,
    help="Retention schedule: england, scotland, wales, northern-ireland, or one registered "
    "(default: $FHIR_IMAGES_RETENTION_SCHEDULE, else england).",
)
@click.option(
    "--summary-in-record",
    default=None,
    help="An original audio or video recording whose content (or an accurate summary) is in "
    "the record: say where (e.g. 'consultation note 2026-11-20'); recorded in the audit.",
)
@click.option(
    "--last-treatment",
    default=None,
    help="Date of last treatment (default: the image's creation date).",
)
@server_option
@click.pass_context
def destroy_cmd(
    ctx: click.Context,
    media_ref: str,
    by: str,
    reason: str,
    record_type: str,
    schedule: str | None,
    summary_in_record: str | None,
    last_treatment: str | None,
    server: str | None,
) -> None:
    """Destroy an image (Media, Binary, Consent, Provenance) if retention allows; audited.

    Exit 4 when the retention schedule or a legal hold says keep it.
    """
    try:
        last = date.fromisoformat(last_treatment) if last_treatment else None
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--last-treatment") from None
    result = destroy(
        client_for(ctx, server),
        media_ref,
        by=by,
        reason=reason,
        record_type=record_type,
        schedule=RetentionSchedule.load(schedule or settings(ctx).retention_schedule),
        last_treatment=last,
        summary_in_record=summary_in_record,
    )
    click.echo(f"deleted {', '.join(result.deleted)}; audit: {result.audit_event}")
    click.echo(f"{media_ref} destroyed")


@click.command("anonymise")
@click.argument("media_ref")
@click.option(
    "--purpose", default="TRAIN", show_default=True, type=click.Choice(ANONYMISATION_PURPOSES)
)
@click.option("--by", required=True, help="Practitioner reference of who makes the copy.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@server_option
@click.pass_context
def anonymise_cmd(
    ctx: click.Context, media_ref: str, purpose: str, by: str, out_dir: Path, server: str | None
) -> None:
    """An anonymised copy for teaching or research, only if the consent permits it."""
    copy = anonymise(client_for(ctx, server), media_ref, out_dir, purpose=purpose, by=by)
    click.echo(f"anonymised copy: {copy.image} ({copy.media.name})")
    click.echo("review the copy before use: the picture itself may identify the patient")


@click.command("policies")
def policies_cmd() -> None:
    """List the policy packs."""
    for name, pack in sorted(POLICIES.items()):
        click.echo(f"{name}: {pack.description}")


def register(main: click.Group) -> None:
    main.add_command(destroy_cmd)
    main.add_command(anonymise_cmd)
    main.add_command(policies_cmd)
