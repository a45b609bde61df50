"""``fhir-images hook``: the service that labels images arriving on the server by other routes."""

from __future__ import annotations

from typing import Any

import click

from ._common import client_for, policy_option, server_option, settings


@click.group("hook")
def hook_group() -> None:
    """The server hook: a service that labels images arriving on the FHIR server by other routes.

    The shared secret comes from FHIR_IMAGES_HOOK_SECRET (never from the command line).
    """


@hook_group.command("serve")
@server_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--queue-size", default=1000, show_default=True, type=click.IntRange(1, 100000))
@click.option(
    "--parallel",
    default=4,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Images labelled at once, over all workers.",
)
@policy_option("'default'")
@click.pass_context
def hook_serve(
    ctx: click.Context,
    server: str | None,
    host: str,
    port: int,
    workers: int,
    queue_size: int,
    parallel: int,
    policy_name: str | None,
) -> None:
    """Run the labelling service (GET /health; the server calls PUT /hook/{type}/{id})."""
    HookService, run_service = _service()

    secret = settings(ctx).require_hook_secret()
    service = HookService(
        client_for(ctx, server, workers),
        secret,
        workers=workers,
        queue_size=queue_size,
        parallel=parallel,
        policy=policy_name or "default",
    )
    run_service(service, host=host, port=port)


@hook_group.command("install")
@server_option
@click.option(
    "--endpoint",
    required=True,
    help="Base URL of the hook service as the FHIR server reaches it, e.g. http://127.0.0.1:8765",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for 'active'.")
@click.pass_context
def hook_install(ctx: click.Context, server: str | None, endpoint: str, timeout: float) -> None:
    """Create the Subscriptions (idempotent) and wait until the server reports them active."""
    from ..fhir.subscriptions import install_subscriptions

    secret = settings(ctx).require_hook_secret()
    refs = install_subscriptions(client_for(ctx, server), endpoint, secret, timeout=timeout)
    click.echo("active: " + ", ".join(refs))


def _service() -> Any:
    """The service's classes; a hint, not a traceback, when its extra is not installed."""
    try:
        from .._hook import HookService, run_service
    except ImportError:
        raise click.UsageError(
            "the hook service needs its extra: pip install 'fhir-images[server]'"
        ) from None
    return HookService, run_service


def register(main: click.Group) -> None:
    main.add_command(hook_group)
