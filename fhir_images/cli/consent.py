"""``fhir-images consent``: confirm consent for a held image, withdraw or narrow it."""

from __future__ import annotations

from pathlib import Path

import click

from .._lifecycle import NARROWABLE, narrow_consent, withdraw_consent
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
@click.pass_context
def consent_confirm(
    ctx: click.Context, entry_id: str, consent_file: Path, as_json: bool, outbox_dir: Path | None
) -> None:
    """Record confirmed consent for a held image; it moves to ready if now allowed."""
    recheck_entry(ctx, entry_id, consent_file, None, as_json, outbox_dir)


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
