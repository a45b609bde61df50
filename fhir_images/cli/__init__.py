"""The ``fhir-images`` command: a thin shell over the library, one module per command group.

Exit codes and the one map from library errors to them are in :mod:`._common`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from .._exceptions import FhirImagesError
from .._version import __version__
from ._common import EXIT_ERROR, err, fail

#: Other libraries' loggers stay at WARNING whatever -v says: their debug output can hold
#: EXIF fields, query strings with patient references, or request bodies.
QUIET_LOGGERS = (
    "PIL",
    "urllib3",
    "requests",
    "httpx",
    "httpcore",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "starlette",
    "asyncio",
    "multipart",
    "charset_normalizer",
    "mutagen",
    "pillow_heif",
    "yaml",
)


class _Group(click.Group):
    """Maps every library error that reaches it to its exit code, with a clear message; an
    unexpected one (a bug) is named by its type and place only: its message and a traceback
    could carry the data it was handling."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FhirImagesError as exc:
            fail(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = (
                f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else "unknown"
            )
            err.print(
                f"unexpected error: {type(exc).__name__} at {where} (a fault in fhir-images; "
                "nothing was half-written)",
                markup=False,
            )
            sys.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhir-images")
@click.option("-v", "--verbose", count=True, help="Log progress to stderr (no patient data).")
def main(verbose: int) -> None:
    """Clinical images and recordings into FHIR, with consent rules and security labels."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


from . import (  # noqa: E402
    check,
    consent,
    disclose,
    gateway,
    hook,
    ingest,
    outbox,
    profiles,
    records,
    request,
    server,
)

for module in (
    ingest,
    request,
    outbox,
    server,
    disclose,
    consent,
    records,
    hook,
    gateway,
    check,
    profiles,
):
    module.register(main)

__all__ = ["main"]
