"""The server hook under a burst: notifications handled per second, and the time from a Media's
creation on the server to its labels being there (median and p95).

    FHIR_BASE_URL=http://127.0.0.1:8080/fhir python bench/bench_hook.py [--count 200]

Two phases against the same server, in one run:
  baseline: the hook service with a handler that does nothing: how fast the server delivers
            notifications (creation -> notification received);
  ours:     the real handler: creation -> labels applied and verified on the server.
Media are created in a burst by parallel clients, unlabelled, as another application would.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


def run_phase(base: str, count: int, patient: str, noop: bool) -> dict[str, float]:
    client = FhirClient(base, pool_size=8)
    done: dict[str, float] = {}
    lock = threading.Lock()
    original = Labeller.process

    def process(self: Labeller, rtype: str, rid: str) -> list:
        result = [] if noop else original(self, rtype, rid)
        with lock:
            done.setdefault(rid, time.monotonic())
        return result

    Labeller.process = process  # type: ignore[method-assign]
    secret = secrets.token_urlsafe(24)
    service = HookService(client, secret, workers=4, queue_size=count * 4)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    refs = install_subscriptions(
        client, f"http://127.0.0.1:{port}", secret, resource_types=("Media",)
    )
    created: dict[str, float] = {}
    session = requests.Session()

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
        with lock:
            created[rid] = t

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, range(count)))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with lock:
            if all(rid in done for rid in created):
                break
        time.sleep(0.2)
    finished = max(done.values()) if done else time.monotonic()
    for ref in refs:
        client.delete(ref)
    server.should_exit = True
    thread.join(timeout=10)
    Labeller.process = original  # type: ignore[method-assign]
    latencies = [done[rid] - created[rid] for rid in created if rid in done]
    missing = len(created) - len(latencies)
    return {
        "handled": len(latencies),
        "missing": missing,
        "per_second": round(len(latencies) / (finished - started), 2),
        "median_s": round(statistics.median(latencies), 3),
        "p95_s": round(p95(latencies), 3),
        "failed": service.stats.failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.environ.get("FHIR_BASE_URL"))
    ap.add_argument("--count", type=int, default=200)
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
    baseline = run_phase(base, args.count, f"Patient/{pid}", noop=True)
    ours = run_phase(base, args.count, f"Patient/{pid}", noop=False)
    print(f"{args.count} Media created in a burst")
    for name, r in (("baseline (no-op handler)", baseline), ("ours (label + verify)", ours)):
        print(
            f"  {name:26} {r['per_second']:7.2f}/s  median {r['median_s']:6.2f} s  "
            f"p95 {r['p95_s']:6.2f} s  missing {r['missing']}  failed {r['failed']}"
        )
    print(
        f"  ratio ours/baseline: median {ours['median_s'] / baseline['median_s']:.2f}, "
        f"throughput {ours['per_second'] / baseline['per_second']:.2f}"
    )
    print(json.dumps({"bench": "hook", "count": args.count, "baseline": baseline, "ours": ours}))


if __name__ == "__main__":
    main()
