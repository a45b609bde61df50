"""The gateway: a FHIR proxy that labels images as they are written and enforces their labels
and consent on every read (see :mod:`.service`; tokens in :mod:`.tokens`, request screening in
:mod:`.screen`)."""

from __future__ import annotations

from .screen import Refused, Route, screen
from .service import Gateway, GatewayLimits
from .tokens import ADMIN_SCOPE, Caller, Scope, TokenError, TokenVerifier

__all__ = [
    "ADMIN_SCOPE",
    "Caller",
    "Gateway",
    "GatewayLimits",
    "Refused",
    "Route",
    "Scope",
    "TokenError",
    "TokenVerifier",
    "run_gateway",
    "screen",
]


def run_gateway(gateway: Gateway, *, host: str, port: int, header_timeout: float = 10.0) -> None:
    """Serve the gateway with uvicorn, guarded against idle and slow clients as the hook is;
    no access log (its lines would carry query strings)."""
    import uvicorn

    from .._hook import guarded_protocol

    uvicorn.run(
        gateway,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=guarded_protocol(header_timeout),
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        lifespan="on",
    )
