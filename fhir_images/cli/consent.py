"""``fhir-images consent``: confirm consent for a held image, withdraw or narrow it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._ingest import parse_consent
from .._inputs import load_structured
from .._lifecycle import NARROWABLE, narrow_consent, withdraw_consent
from .._maturity import MATURITY_AGE, maturity_review, reconsent
from ._common import by_reason, client_for, json_option, outbox_option, server_option
from .outbox import recheck_entry


@click.group("consent")
def consent_group() -> None:
    """Confirm, withdraw or narrow consent."""


@consent_group.command("confirm")
@click.argument("entry_id")
@click.option("--consent", "consent_file", type=click.Path(path_type=Path), required=True)
@json_option
@outbox_option
@server_option
@click.pass_context
def consent_confirm(
    ctx: click.Context,
    entry_id: str,
    consent_file: Path,
    as_json: bool,
    outbox_dir: Path | None,
    server: str | None,
) -> None:
    """Record confirmed consent for a held image (ENTRY_ID, an outbox entry); it moves to
    ready if now allowed. For an image on the server (ENTRY_ID a Media/.. or
    DocumentReference/.. reference, with --server), record the young person's own consent
    after a maturity review: it supersedes the consent given for them, and closes the review
    once none of their images waits for it."""
    if "/" not in entry_id:
        recheck_entry(ctx, entry_id, consent_file, None, as_json, outbox_dir)
        return
    consent = parse_consent(load_structured(consent_file, "consent file"))
    if consent is None:
        raise click.UsageError("--consent: the file holds no consent")
    done = reconsent(client_for(ctx, server), entry_id, consent)
    if as_json:
        click.echo(json.dumps(done.model_dump(mode="json")))
        return
    click.echo(f"consent recorded: {done.consent}")
    if done.superseded:
        click.echo(f"superseded: {', '.join(done.superseded)}")
    if done.task_completed:
        click.echo(f"maturity review completed: {done.task_completed}")


@consent_group.command("maturity-review")
@click.option(
    "--age",
    type=click.IntRange(12, 18),
    default=MATURITY_AGE,
    show_default=True,
    help="Review patients from this age (16: presumed able to consent to treatment).",
)
@click.option(
    "--patient", "patients", multiple=True, help="Only this patient (Patient/..); repeatable."
)
@json_option
@server_option
@click.pass_context
def consent_maturity_review(
    ctx: click.Context, age: int, patients: tuple[str, ...], as_json: bool, server: str | None
) -> None:
    """Open one Task per patient who has reached AGE and has images kept on someone else's
    consent, for a clinician to offer them re-consent (GMC recordings para 35). Running it
    again opens no second Task."""
    review = maturity_review(
        client_for(ctx, server), age=age, patients=list(patients) if patients else None
    )
    if as_json:
        click.echo(json.dumps(review.model_dump(mode="json", exclude={"images"})))
        return
    click.echo(f"{len(review.created)} review task(s) opened, {len(review.existing)} already open")


@consent_group.command("withdraw")
@click.argument("ref")
@by_reason
@server_option
@click.pass_context
def consent_withdraw(
    ctx: click.Context, ref: str, by: str, reason: str, server: str | None
) -> None:
    """The patient withdraws consent for an image (REF: one of its Consents, or the Media):
    every active Consent of the image becomes inactive and it stops being shared."""
    change = withdraw_consent(client_for(ctx, server), ref, by=by, reason=reason)
    if change.nothing_changed:
        click.echo(
            "no active consent for that image: nothing was changed "
            f"(already inactive: {', '.join(change.unchanged) or 'none'})"
        )
    else:
        click.echo(f"withdrawn: {', '.join(change.changed)}")


@consent_group.command("narrow")
@click.argument("ref")
@click.option(
    "--deny",
    "deny",
    multiple=True,
    required=True,
    type=click.Choice(NARROWABLE),
    help="A permission to turn into a refusal; repeatable.",
)
@by_reason
@server_option
@click.pass_context
def consent_narrow(
    ctx: click.Context,
    ref: str,
    deny: tuple[str, ...],
    by: str,
    reason: str,
    server: str | None,
) -> None:
    """Turn some permissions of an image's consent into refusals."""
    change = narrow_consent(client_for(ctx, server), ref, deny=deny, by=by, reason=reason)
    if change.nothing_changed:
        click.echo("no active consent permits that any more: nothing was changed")
    else:
        click.echo(f"narrowed (no {', '.join(deny)}): {', '.join(change.changed)}")


def register(main: click.Group) -> None:
    main.add_command(consent_group)
