"""What every command shares: exit codes, the one map from errors to exit codes, options.

Exit codes:
  0  done (stored, delivered, released)
  1  an unexpected error (a server error, an outbox that cannot be written, ...)
  2  bad input: a file, context, consent, request or setting that cannot be used
  3  held: not yet allowed into the record; or a disclosure waits for approval
  4  refused: the rules forbid it (not stored, withheld, retention, legal hold)
  5  stored, but not delivered: the entry stays in the outbox with the reason
With several inputs the most serious wins, in the order 2, 4, 3, 1, 5, 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.shell_completion import CompletionItem
from rich.console import Console

from .. import _codes
from .._exceptions import ActionRefused, BadInput, FhirImagesError
from .._outbox import Outbox
from .._settings import Settings
from ..fhir import FhirClient
from ..policy import POLICIES

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_HELD, EXIT_REFUSED = 0, 1, 2, 3, 4
EXIT_NOT_DELIVERED = 5
_PRECEDENCE = [EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_HELD, EXIT_ERROR, EXIT_NOT_DELIVERED, EXIT_OK]

#: The one map from library errors to exit codes and the word shown before the message
ERROR_EXITS: tuple[tuple[type[FhirImagesError], int, str], ...] = (
    (BadInput, EXIT_BAD_INPUT, "bad input"),
    (ActionRefused, EXIT_REFUSED, "refused"),
    (FhirImagesError, EXIT_ERROR, "error"),
)

err = Console(stderr=True, highlight=False)


def exit_code_for(exc: FhirImagesError) -> tuple[int, str]:
    for cls, code, word in ERROR_EXITS:
        if isinstance(exc, cls):
            return code, word
    return EXIT_ERROR, "error"  # pragma: no cover - FhirImagesError is last


def fail(exc: FhirImagesError) -> NoReturn:
    code, word = exit_code_for(exc)
    err.print(f"{word}: {exc}", markup=False)
    sys.exit(code)


def worst(codes: Iterable[int]) -> int:
    found = set(codes)
    return next((code for code in _PRECEDENCE if code in found), EXIT_OK)


def settings(ctx: click.Context) -> Settings:
    """The settings, read from the environment once per run."""
    root = ctx.find_root()
    if root.obj is None:
        root.obj = Settings.from_env()
    value: Settings = root.obj
    return value


def outbox_for(ctx: click.Context, folder: Path | None) -> Outbox:
    return Outbox(folder or settings(ctx).outbox)


def client_for(ctx: click.Context, server: str | None, workers: int = 4) -> FhirClient:
    try:
        return FhirClient.from_settings(settings(ctx), server, pool_size=max(workers, 1))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def label_text(security: list[dict[str, str]]) -> str:
    short = {_codes.V3_CONFIDENTIALITY: "conf", _codes.LOCAL_SENSITIVITY: "local"}
    return " ".join(
        f"{short[s['system']]}:{s['code']}" if s["system"] in short else s["code"] for s in security
    )


F = TypeVar("F", bound=Callable[..., Any])

outbox_option = click.option(
    "--outbox",
    "outbox_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Outbox folder (default $FHIR_IMAGES_OUTBOX or ./fhir-images-outbox).",
)
server_option = click.option(
    "--server", "server", default=None, help="FHIR base URL (default $FHIR_BASE_URL)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def by_reason(f: F) -> F:
    f = click.option("--reason", required=True, help="Why.")(f)
    return click.option("--by", required=True, help="Who records this (Practitioner/..).")(f)


if TYPE_CHECKING:
    _TextParam = click.ParamType[str]
else:  # click before 8.2 has no generic ParamType
    _TextParam = click.ParamType


class PolicyName(_TextParam):
    """A policy pack's name, checked against the registry when the command runs (so packs
    registered after import are accepted too)."""

    name = "pack"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        names = sorted(POLICIES)
        if value in POLICIES:
            return str(value)
        self.fail(f"no policy pack of that name; choose one of: {', '.join(names)}", param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(n) for n in sorted(POLICIES) if n.startswith(incomplete)]


def policy_option(default_help: str) -> Callable[[F], F]:
    return click.option(
        "--policy",
        "policy_name",
        default=None,
        type=PolicyName(),
        help=f"Policy pack (see 'fhir-images policies'); default: {default_help}.",
    )
