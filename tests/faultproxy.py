"""A fault-injecting HTTP proxy for the fault tests: it sits between a client and a FHIR server.

Each request is forwarded, or, as a seeded random draw decides:

* ``drop_before``: the connection is closed without forwarding (nothing reached the server);
* ``drop_after``: the request is forwarded and the server's answer thrown away, then the
  connection is closed (the server did the work; the client never hears of it);
* ``status``: 503 or 429 with ``Retry-After`` instead of forwarding;
* ``delay``: forwarded after a pause.

Requests are read whole (the test images are small), forwarded with ``http.client``, and the
answer is written back with ``Connection: close``. Counts of every outcome are kept.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import socketserver
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass
class Faults:
    drop_before: float = 0.06
    drop_after: float = 0.06
    unavailable: float = 0.04  # 503 with Retry-After
    rate_limited: float = 0.02  # 429 with Retry-After
    delay: float = 0.03
    delay_seconds: float = 0.3
    seed: int = 1
    enabled: bool = True
    #: query parameters the "server" silently ignores (removed before forwarding)
    drop_params: tuple[str, ...] = ()
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def draw(self) -> str:
        if not self.enabled:
            return "forward"
        with self._lock:
            x = self._rng.random()
            for name in ("drop_before", "drop_after", "unavailable", "rate_limited", "delay"):
                p = getattr(self, name)
                if x < p:
                    self.counts[name] += 1
                    self.counts["requests"] += 1
                    return name
                x -= p
            self.counts["forwarded"] += 1
            self.counts["requests"] += 1
            return "forward"


_BUSY = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'


class _Handler(socketserver.StreamRequestHandler):
    server: FaultProxy  # type: ignore[assignment]

    def handle(self) -> None:
        while True:
            request_line = self.rfile.readline(65537)
            if not request_line:
                return
            try:
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
            except ValueError:
                return
            headers: list[tuple[str, str]] = []
            while True:
                line = self.rfile.readline(65537).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            body = self.rfile.read(length) if length else b""
            if not self._one(method, target, headers, body):
                return

    def _one(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        proxy = self.server
        fault = proxy.faults.draw()
        if fault == "drop_before":
            self._reset()
            return False
        if fault in ("unavailable", "rate_limited"):
            status = 503 if fault == "unavailable" else 429
            text = _BUSY
            head = (
                f"HTTP/1.1 {status} Busy\r\nRetry-After: 0\r\n"
                "Content-Type: application/fhir+json\r\n"
                f"Content-Length: {len(text)}\r\nConnection: keep-alive\r\n\r\n"
            )
            self.wfile.write(head.encode() + text)
            return True
        if fault == "delay":
            time.sleep(proxy.faults.delay_seconds)
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=300)
        try:
            path = proxy.upstream_prefix + _without(target[len(proxy.prefix) :], proxy.faults)
            skip = {"host", "connection", "keep-alive", "proxy-connection", "accept-encoding"}
            upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            upstream.putheader("Host", f"{proxy.upstream_host}:{proxy.upstream_port}")
            for name, value in headers:
                if name.lower() not in skip:
                    upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
            if fault == "drop_after":
                self._reset()
                return False
            out = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    out.append(f"{name}: {value}\r\n")
            out.append(f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n")
            self.wfile.write("".join(out).encode("latin-1") + data)
            return True
        finally:
            upstream.close()

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        self.connection.close()


def _without(target: str, faults: Faults) -> str:
    """The request target without the parameters the faults say to drop."""
    if not faults.drop_params or "?" not in target:
        return target
    path, query = target.split("?", 1)
    kept = [p for p in query.split("&") if unquote(p.split("=", 1)[0]) not in faults.drop_params]
    return f"{path}?{'&'.join(kept)}" if kept else path


class FaultProxy(socketserver.ThreadingTCPServer):
    """``FaultProxy(upstream_base, faults)``; ``.base_url`` is the proxied FHIR base URL."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_base: str, faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream_base.rstrip("/"))
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_prefix = parts.path
        self.prefix = parts.path
        self.faults = faults
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}{parts.path}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
