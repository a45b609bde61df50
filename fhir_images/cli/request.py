"""``fhir-images request``: record a clinician's request for an image (a ServiceRequest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .._context import ImageKind
from .._lifecycle import _write_private
from .._requests import ImageRequest, request_image
from ._common import client_for, server_option

_SENDER_HELP = "Who may send it (Patient/.. or RelatedPerson/..); repeatable."
_OUT_HELP = "Write the recorded request here (for `ingest --request FILE`; owner-only)."


@click.group("request")
def request_group() -> None:
    """Ask for an image: what, which body site, from whom, by when (W5)."""


@request_group.command("create")
@click.option("--patient", required=True, help="Patient reference, e.g. Patient/123.")
@click.option("--birth-date", required=True, help="The patient's birth date (YYYY-MM-DD).")
@click.option("--requester", required=True, help="The clinician asking (Practitioner/..).")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in ImageKind]),
    default=ImageKind.PHOTO.value,
    show_default=True,
)
@click.option(
    "--body-site", required=True, help="SNOMED CT code and/or text: 'CODE', 'CODE|text', '|text'."
)
@click.option(
    "--intimate/--not-intimate",
    required=True,
    default=None,
    help="Whether the image asked for shows an intimate area (refused for under-18s).",
)
@click.option("--reason", required=True, help="Why the image is needed for the patient's care.")
@click.option("--valid-until", required=True, help="When the request expires (ISO 8601).")
@click.option("--sender", "senders", multiple=True, required=True, help=_SENDER_HELP)
@click.option("--out", "out_file", type=click.Path(path_type=Path), help=_OUT_HELP)
@server_option
def request_create(out_file: Path | None, server: str | None, **fields: Any) -> None:
    """Record a request for an image on the server; prints its reference.

    Exit 4 when the rules would never store what it asks for (an intimate image of an
    under-18), 2 when a field is not usable."""
    code, _, text = fields.pop("body_site").partition("|")
    site = {k: v for k, v in (("code", code.strip()), ("display", text.strip())) if v}
    request = ImageRequest.model_validate({**fields, "body_site": site})
    recorded = request_image(client_for(click.get_current_context(), server), request).request
    if out_file is not None:
        _write_private(out_file, json.dumps(recorded.model_dump(mode="json"), indent=2).encode())
    click.echo(recorded.id)


def register(main: click.Group) -> None:
    main.add_command(request_group)
