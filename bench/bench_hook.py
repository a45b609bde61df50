"""The server hook under a burst: notifications handled per second, and the time from a Media's
creation on the server to its labels being there (median and p95).

    FHIR_BASE_URL=http://127.0.0.1:8080/fhir python bench/bench_hook.py [--count 200] [--rounds 3]

Three phases against the same server, in rounds whose order alternates (forwards, then
backwards, ...), one JSON line a round, then the median of the p95 ratios and their spread:
  baseline: the hook service with a handler that does nothing: how fast the server delivers
            notifications (creation -> notification received);
  floor:    a handler that writes one label to the Media and nothing else (no read, no check):
            the server's own cost of the least any labeller must do;
  ours:     the real handler: creation -> labels applied and verified on the server.
A smaller burst on every path warms the server first.
Media are created in a burst by parallel clients, unlabelled, as another application would.
A notification that comes late, about a Media of an earlier phase (the floor's label writes
notify too), is not handled in the phase it falls into.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import uvicorn

from fhir_images import FhirClient
from fhir_images._hook import HookService, Labeller, install_subscriptions

CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
MODES = ("baseline", "floor", "ours")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


class Harness:
    """One hook service and one Subscription for every phase (a server may keep delivering to
    a deleted Subscription for a while, into the next phase); the handler's mode changes
    between phases."""

    def __init__(
        self,
        base: str,
        workers: int,
        queue_size: int,
        wait: float = 60,
        *,
        parallel: int = 4,
        gather: float = 0.05,
    ) -> None:
        self.base = base
        self.wait = wait
        self.mode = "baseline"
        self.done: dict[str, float] = {}
        self.earlier: set[str] = set()  # the Media of finished phases
        self.lock = threading.Lock()
        self.client = FhirClient(base, pool_size=8)
        self.original = Labeller.process
        harness = self

        def process(labeller: Labeller, rtype: str, rid: str, **kw: object) -> list:
            result: list = []
            if rid in harness.earlier:
                # a notification about a Media of an earlier phase, late (the floor's label
                # writes notify too): not this phase's work, whatever the handler
                return result
            if harness.mode == "ours":
                result = harness.original(labeller, rtype, rid, **kw)  # type: ignore[arg-type]
            elif harness.mode == "floor" and rid not in harness.done:
                # once an image: on a server where a label write makes a new version (HFS),
                # it notifies again, and writing again would never end
                label = [{"system": CONF, "code": "N"}]
                client = labeller.client
                client.profile.labels.write(client, f"{rtype}/{rid}", label, [], label)
            with harness.lock:
                harness.done.setdefault(rid, time.monotonic())
            return result

        Labeller.process = process  # type: ignore[method-assign]
        secret = secrets.token_urlsafe(24)
        self.service = HookService(
            self.client,
            secret,
            workers=workers,
            queue_size=queue_size,
            parallel=parallel,
            gather=gather,
        )
        port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.service.app, host="127.0.0.1", port=port, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.refs = install_subscriptions(
            self.client, f"http://127.0.0.1:{port}", secret, resource_types=("Media",)
        )

    def close(self) -> None:
        for ref in self.refs:
            self.client.delete(ref)
        self.server.should_exit = True
        self.thread.join(timeout=10)
        Labeller.process = self.original  # type: ignore[method-assign]

    def quiet(self, deadline: float) -> None:
        """Until no notification has come for 2 s and none is queued: the notifications the
        labelling itself causes are let in and handled before the next phase."""
        service = self.service
        quiet_since, last = time.monotonic(), -1
        while time.monotonic() - quiet_since < 2 and time.monotonic() < deadline:
            seen = service.stats.received
            if seen != last or (service._queue is not None and service._queue.qsize()):
                quiet_since, last = time.monotonic(), seen
            time.sleep(0.2)

    def phase(self, count: int, patient: str, mode: str) -> dict[str, float]:
        """One burst: ``mode`` is ``baseline`` (a handler that does nothing), ``floor`` (a
        handler that only writes one label to the Media, nothing read or checked: the server's
        own cost of the least a labeller must do) or ``ours`` (the hook's handler)."""
        self.mode = mode
        failed_before = self.service.stats.failed
        created: dict[str, float] = {}
        session = requests.Session()
        base = self.base

        def create(i: int) -> None:
            body = {
                "resourceType": "Media",
                "status": "completed",
                "subject": {"reference": patient},
                "operator": {"reference": "Practitioner/bench"},
                "reasonCode": [{"text": "bench"}],
                "content": {"contentType": "image/jpeg", "url": "Binary/none"},
            }
            t = time.monotonic()
            r = session.post(
                f"{base}/Media",
                json=body,
                timeout=60,
                headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
            )
            r.raise_for_status()
            rid = r.headers["Location"].split("/_history")[0].rsplit("/", 1)[-1]
            with self.lock:
                created[rid] = t

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, range(count)))
        deadline = time.monotonic() + self.wait  # a notification the server never sends
        while time.monotonic() < deadline:
            with self.lock:
                if all(rid in self.done for rid in created):
                    break
            time.sleep(0.2)
        with self.lock:
            ends = [self.done[rid] for rid in created if rid in self.done]
            latencies = [self.done[rid] - created[rid] for rid in created if rid in self.done]
        finished = max(ends) if ends else time.monotonic()
        self.quiet(deadline)
        with self.lock:
            self.earlier |= set(created)
        if not latencies:
            # the server delivered nothing in time: a failed phase, reported as such
            stats = self.service.stats
            raise SystemExit(
                f"{mode}: none of {len(created)} Media handled within {self.wait:.0f} s "
                f"(received {stats.received}, processed {stats.processed}, failed "
                f"{stats.failed}: {list(stats.recent_failures)[-3:]})"
            )
        return {
            "handled": len(latencies),
            "missing": len(created) - len(latencies),
            "per_second": round(len(latencies) / (finished - started), 2),
            "median_s": round(statistics.median(latencies), 3),
            "p95_s": round(p95(latencies), 3),
            "failed": self.service.stats.failed - failed_before,
            "received": self.service.stats.received,
            "rejected": self.service.stats.rejected,
            "coalesced": self.service.stats.coalesced,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.environ.get("FHIR_BASE_URL"))
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4, help="The hook's workers.")
    ap.add_argument(
        "--parallel", type=int, default=4, help="Images the hook labels at once (all workers)."
    )
    ap.add_argument(
        "--gather",
        type=float,
        default=0.05,
        help="Seconds a worker waits after a notification for more to batch with it.",
    )
    ap.add_argument(
        "--wait",
        type=float,
        default=60,
        help="Seconds to wait after a burst for notifications; those not come are 'missing'.",
    )
    args = ap.parse_args()
    if not args.server:
        sys.exit("give --server or set FHIR_BASE_URL")
    base = args.server.rstrip("/")
    pid = f"hookbench-{int(time.time())}"
    s = requests.Session()
    for ref, body in (
        (f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "birthDate": "1980-01-01"}),
        ("Practitioner/bench", {"resourceType": "Practitioner", "id": "bench"}),
    ):
        s.put(
            f"{base}/{ref}",
            json=body,
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        ).raise_for_status()
    harness = Harness(
        base,
        args.workers,
        args.count * 4,
        args.wait,
        parallel=args.parallel,
        gather=args.gather,
    )
    try:
        rounds = run_rounds(harness, args, f"Patient/{pid}")
    finally:
        harness.close()
    report(rounds, args)


def run_rounds(harness: Harness, args: argparse.Namespace, patient: str) -> list[dict]:
    for mode in MODES:  # warm the server (and its subscription channel) on every path
        harness.phase(max(20, args.count // 4), patient, mode)
    rounds = []
    for k in range(args.rounds):  # the order alternates: forwards, backwards, ...
        order = MODES if k % 2 == 0 else tuple(reversed(MODES))
        got = {mode: harness.phase(args.count, patient, mode) for mode in order}
        row = {
            "bench": "hook-round",
            "round": k + 1,
            "order": list(order),
            "count": args.count,
            **got,
            "p95_ratio": round(got["ours"]["p95_s"] / got["baseline"]["p95_s"], 3),
            "floor_p95_ratio": round(got["floor"]["p95_s"] / got["baseline"]["p95_s"], 3),
            # what the hook's reads, checks and Tasks add to the least a labeller must do
            "over_floor_p95_ratio": round(got["ours"]["p95_s"] / got["floor"]["p95_s"], 3),
            "median_ratio": round(got["ours"]["median_s"] / got["baseline"]["median_s"], 3),
        }
        rounds.append(row)
        print(json.dumps(row), flush=True)
    return rounds


def report(rounds: list[dict], args: argparse.Namespace) -> None:
    print(f"{args.count} Media created in a burst, {args.rounds} alternating rounds")
    labels = {
        "baseline": "baseline (no-op handler)",
        "floor": "floor (one label write)",
        "ours": "ours (label + verify)",
    }
    for name in MODES:
        rs = [r[name] for r in rounds]
        print(
            f"  {labels[name]:26} {statistics.median(r['per_second'] for r in rs):7.2f}/s  median "
            f"{statistics.median(r['median_s'] for r in rs):6.2f} s  p95 "
            f"{statistics.median(r['p95_s'] for r in rs):6.2f} s  "
            f"missing {sum(r['missing'] for r in rs)}  failed {sum(r['failed'] for r in rs)}"
        )
    summary = {
        key: {
            "median": statistics.median(r[key] for r in rounds),
            "min": min(r[key] for r in rounds),
            "max": max(r[key] for r in rounds),
        }
        for key in ("p95_ratio", "floor_p95_ratio", "over_floor_p95_ratio", "median_ratio")
    }
    print(
        f"  ours/baseline p95: median {summary['p95_ratio']['median']:.2f} "
        f"(min {summary['p95_ratio']['min']:.2f}, max {summary['p95_ratio']['max']:.2f}); "
        f"floor/baseline p95: median {summary['floor_p95_ratio']['median']:.2f}; "
        f"ours/floor p95: median {summary['over_floor_p95_ratio']['median']:.2f}; "
        f"median latency ours/baseline: {summary['median_ratio']['median']:.2f}"
    )
    print(
        json.dumps(
            {
                "bench": "hook",
                "count": args.count,
                "rounds": args.rounds,
                "workers": args.workers,
                "parallel": args.parallel,
                "gather": args.gather,
                "machine": f"{os.cpu_count()} cores",
                **summary,
            }
        )
    )


if __name__ == "__main__":
    main()
