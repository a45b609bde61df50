"""``fhir-images gateway``: the FHIR proxy that labels images on write and enforces on read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ._common import client_for, policy_option, settings


@click.group("gateway")
def gateway_group() -> None:
    """The gateway: a FHIR proxy in front of the server that labels images as they are written
    and decides every image and Binary it hands out (token claims: see the README).

    The server's credentials come from the same settings as every command (FHIR_TOKEN, or
    FHIR_USERNAME and FHIR_PASSWORD); callers never see them.
    """


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("give host:port, e.g. 127.0.0.1:8770", param_hint="--listen")
    return host, int(port)


_File = click.Path(exists=True, dir_okay=False, path_type=Path)
F = TypeVar("F", bound=Callable[..., Any])


def _key_file(name: str, text: str) -> Callable[[F], F]:
    return click.option(name, type=_File, default=None, help=text)


def _limit(name: str, default: int, text: str) -> Callable[[F], F]:
    return click.option(
        name, default=default, show_default=True, type=click.IntRange(1024), help=text
    )


@gateway_group.command("serve")
@click.option("--upstream", required=True, help="The FHIR server's base URL.")
@click.option("--listen", default="127.0.0.1:8770", show_default=True, help="host:port to serve.")
@click.option(
    "--public-url",
    default=None,
    help="The gateway's base URL as clients reach it (for paging links); default http://LISTEN.",
)
@_key_file("--jwt-secret-file", "HS256: a file holding the shared secret (32 bytes or more).")
@_key_file("--jwt-public-key", "RS256: a PEM file with the token issuer's public key.")
@_key_file("--jwks-file", "RS256: a JWKS file with the token issuer's public keys (by kid).")
@click.option("--audience", default=None, help="Require this 'aud' in every token.")
@click.option("--issuer", default=None, help="Require this 'iss' in every token.")
@_limit("--max-json", 16 << 20, "Largest FHIR JSON body read whole (bytes); more is refused.")
@_limit("--max-binary", 256 << 20, "Largest raw Binary upload streamed through (bytes).")
@policy_option("'default'")
@click.pass_context
def gateway_serve(
    ctx: click.Context,
    upstream: str,
    listen: str,
    public_url: str | None,
    jwt_secret_file: Path | None,
    jwt_public_key: Path | None,
    jwks_file: Path | None,
    audience: str | None,
    issuer: str | None,
    max_json: int,
    max_binary: int,
    policy_name: str | None,
) -> None:
    """Serve the gateway in front of --upstream (GET /health answers without a token)."""
    parts = _parts()
    host, port = _listen(listen)
    try:
        verifier = parts["TokenVerifier"].from_files(
            secret_file=jwt_secret_file,
            public_key_file=jwt_public_key,
            jwks_file=jwks_file,
            audience=audience,
            issuer=issuer,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings(ctx)
    gateway = parts["Gateway"](
        client_for(ctx, upstream, 20),
        verifier,
        public_url=public_url or f"http://{listen}",
        policy=policy_name or "default",
        limits=parts["GatewayLimits"](max_json=max_json, max_binary=max_binary),
    )
    parts["run_gateway"](gateway, host=host, port=port)


def _parts() -> dict[str, Any]:
    """The gateway's classes; a hint, not a traceback, when its extra is not installed."""
    try:
        from .. import _gateway
    except ImportError:
        raise click.UsageError(
            "the gateway needs its extra: pip install 'fhir-images[gateway]'"
        ) from None
    return {name: getattr(_gateway, name) for name in _gateway.__all__}


def register(main: click.Group) -> None:
    main.add_command(gateway_group)
