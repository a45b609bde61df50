"""The gateway's cost: added latency over direct access, and throughput, against one server.

    python bench/bench_gateway.py --server http://127.0.0.1:8080/fhir [--port 8771] [--n 200]

In one run, on a warm server: a gateway is started in front of it (a process of its own, as
``fhir-images gateway serve`` runs), one adult patient is given 100 images (R4 Media, labelled
N, each with its Binary and a Consent that permits care), and then, alternating direct and
gateway requests so both see the same server state:

  non-image read:   GET Patient/{id}              (passed through)
  image read:       GET Media/{id}                (decided, audited, released)
  image search:     GET Media?subject=..&_count=100 (100 decided, audited in one go)

For each, p50 and p95 of direct and gateway latency, the added p50/p95 and the ratio. Then the
audit-first floor of the image search: timed straight against the server, one after another,
the search, one Consent search for the images found (the gateway's query) and one AuditEvent
stored (a create, or on HFS a line appended to a file and synced): the least any gateway that
reads consent fresh and audits before release must do; printed with gateway/floor beside
gateway/direct. Then throughput (requests per second) at 4 and 16 concurrent clients for
non-image and image reads, direct and through the gateway. No timing is asserted anywhere: the
figures go in the README. Where the server refuses AuditEvents (HFS), audits go to a file
(FHIR_IMAGES_AUDIT).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import requests

from fhir_images.fhir.r4 import R4

CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
IMAGES = 100


def seed(base: str, session: requests.Session) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:8]
    patient = f"bench-{tag}"
    entries: list[dict[str, object]] = [
        {
            "resource": {"resourceType": "Patient", "id": patient, "birthDate": "1970-01-01"},
            "request": {"method": "PUT", "url": f"Patient/{patient}"},
        },
        {  # the requester: audits name them, so they must be on the server
            "resource": {"resourceType": "Practitioner", "id": "bench"},
            "request": {"method": "PUT", "url": "Practitioner/bench"},
        },
    ]
    media = []
    for i in range(IMAGES):
        mid, bid, cid = f"bm-{tag}-{i}", f"bb-{tag}-{i}", f"bc-{tag}-{i}"
        media.append(f"Media/{mid}")
        labels = {"security": [{"system": CONF, "code": "N"}]}
        entries += [
            {
                "resource": {
                    "resourceType": "Binary",
                    "id": bid,
                    "meta": labels,
                    "contentType": "image/jpeg",
                    "securityContext": {"reference": f"Media/{mid}"},
                    "data": "/9j/4AAQSkZJRgABAQ==",
                },
                "request": {"method": "PUT", "url": f"Binary/{bid}"},
            },
            {
                "resource": {
                    "resourceType": "Media",
                    "id": mid,
                    "meta": labels,
                    "status": "completed",
                    "subject": {"reference": f"Patient/{patient}"},
                    "content": {"contentType": "image/jpeg", "url": f"Binary/{bid}"},
                },
                "request": {"method": "PUT", "url": f"Media/{mid}"},
            },
            {
                "resource": {
                    "resourceType": "Consent",
                    "id": cid,
                    "status": "active",
                    "scope": {"coding": [{"code": "patient-privacy"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                    "patient": {"reference": f"Patient/{patient}"},
                    "policy": [{"uri": "https://www.gmc-uk.org/"}],
                    "provision": {
                        "type": "permit",
                        "data": [
                            {"meaning": "instance", "reference": {"reference": f"Media/{mid}"}}
                        ],
                    },
                },
                "request": {"method": "PUT", "url": f"Consent/{cid}"},
            },
        ]
    r = session.post(
        base,
        json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
        headers={"Content-Type": "application/fhir+json"},
        timeout=300,
    )
    r.raise_for_status()
    return f"Patient/{patient}", media


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], requests.Response]) -> float:
    start = time.perf_counter()
    r = fn()
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"bench: status {r.status_code}: {r.text[:300]}")
    return elapsed * 1000


def latency(
    name: str, direct: Callable[[], requests.Response], via: Callable[[], requests.Response], n: int
) -> tuple[float, float, float]:
    for _ in range(5):  # warm both paths
        direct()
        via()
    d, g = [], []
    for i in range(n):  # alternate the order, so neither always goes first
        if i % 2:
            d.append(timed(direct))
            g.append(timed(via))
        else:
            g.append(timed(via))
            d.append(timed(direct))
    dp50, dp95, gp50, gp95 = pct(d, 0.5), pct(d, 0.95), pct(g, 0.5), pct(g, 0.95)
    print(
        f"{name:16s} direct p50 {dp50:7.1f} ms p95 {dp95:7.1f} | gateway p50 {gp50:7.1f} "
        f"p95 {gp95:7.1f} | added p50 {gp50 - dp50:7.1f} p95 {gp95 - dp95:7.1f} ms | "
        f"ratio p50 {gp50 / dp50:5.2f}x p95 {gp95 / dp95:5.2f}x"
    )
    return dp50, gp50, gp95


def floor(
    name: str, steps: Callable[[], None], figures: tuple[float, float, float], n: int
) -> None:
    """The least a gateway that reads consent fresh and audits before release must do, timed
    against the server and printed beside the gateway's figures."""
    for _ in range(3):
        steps()
    f = []
    for _ in range(n):
        start = time.perf_counter()
        steps()
        f.append((time.perf_counter() - start) * 1000)
    fp50, fp95 = pct(f, 0.5), pct(f, 0.95)
    direct, gp50, gp95 = figures
    print(
        f"{name:16s} floor  p50 {fp50:7.1f} ms p95 {fp95:7.1f} | gateway p50 {gp50:7.1f} "
        f"p95 {gp95:7.1f} | gateway/floor p50 {gp50 / fp50:5.2f}x p95 {gp95 / fp95:5.2f}x | "
        f"gateway/direct p50 {gp50 / direct:5.2f}x"
    )


def audit_first_floor(
    base: str, s: requests.Session, search: dict[str, str], audit_file: Path | None
) -> Callable[[], None]:
    """Sequentially, straight to the server: the image search (uncounted, as the gateway asks
    it), one Consent search for the images found (the gateway's query), and one AuditEvent
    stored (a create; on a server that refuses them, a line appended to a file and synced, as
    the gateway's file trail does). The AuditEvent is a copy of one the gateway wrote for this
    search, so it is the same size."""
    if audit_file is not None:
        lines = audit_file.read_text().splitlines()[-50:]
        events = [json.loads(line)["resource"] for line in lines]
    else:
        first = s.get(f"{base}/Media", params=search).json()["entry"][0]["resource"]["id"]
        found = s.get(f"{base}/AuditEvent", params={"entity": f"Media/{first}", "_count": "50"})
        events = [e["resource"] for e in found.json().get("entry", [])]
    event = max(events, key=lambda e: len(e.get("entity", [])))
    event = {k: v for k, v in event.items() if k != "id"}
    event["meta"] = {"security": event.get("meta", {}).get("security", [])}
    fhir = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

    def steps() -> None:
        answer = s.get(f"{base}/Media", params={**search, "_total": "none"}, headers=fhir)
        images = [f"Media/{e['resource']['id']}" for e in answer.json().get("entry", [])]
        rtype, params = R4.consents_of_image(",".join(sorted(images)))
        consents = s.get(f"{base}/{rtype}", params=params, headers=fhir)
        if answer.status_code != 200 or consents.status_code != 200:
            raise SystemExit(f"bench: status {answer.status_code}/{consents.status_code}")
        if audit_file is None:
            stored = s.post(f"{base}/AuditEvent", json=event, headers=fhir)
            if stored.status_code != 201:
                raise SystemExit(f"bench: AuditEvent create {stored.status_code}")
            return
        assert audit_file is not None
        line = json.dumps({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": event}) + "\n"
        floor_file = audit_file.with_name("floor-audit.jsonl")
        fd = os.open(floor_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    return steps


def throughput(
    fn: Callable[[requests.Session, int], requests.Response], clients: int, per: int
) -> float:
    sessions = [requests.Session() for _ in range(clients)]

    def run(k: int) -> None:
        for i in range(per):
            r = fn(sessions[k], i)
            if r.status_code != 200:
                raise SystemExit(f"bench: status {r.status_code}")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return clients * per / (time.perf_counter() - start)


def wait_until_up(health: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            requests.get(health, timeout=1).raise_for_status()
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit("bench: the gateway did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.environ.get("FHIR_BASE_URL"))
    ap.add_argument("--port", type=int, default=8771)
    ap.add_argument("--n", type=int, default=200, help="Requests per latency figure.")
    ap.add_argument("--search-n", type=int, default=30, help="Requests for the search figure.")
    ap.add_argument("--per-client", type=int, default=50)
    args = ap.parse_args()
    if not args.server:
        raise SystemExit("give --server or FHIR_BASE_URL")
    base = args.server.rstrip("/")
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    secret = work / "secret"
    secret.write_text(secrets.token_hex(32))
    env = dict(os.environ)
    software = requests.get(f"{base}/metadata", timeout=30).json().get("software", {})
    if "Helios" in str(software.get("name", "")):
        env.setdefault("FHIR_IMAGES_AUDIT", f"file:{work / 'audit.jsonl'}")
    gw = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_images.cli",
            "gateway",
            "serve",
            "--upstream",
            base,
            "--listen",
            f"127.0.0.1:{args.port}",
            "--jwt-secret-file",
            str(secret),
        ],
        env=env,
    )
    try:
        wait_until_up(f"{gw}/health", proc)
        tok = jwt.encode(
            {
                "sub": "Practitioner/bench",
                "exp": int(time.time()) + 7200,
                "scope": "user/*.rs",
                "purpose_of_use": "TREAT",
            },
            secret.read_text().strip().encode(),
            algorithm="HS256",
        )
        auth = {"Authorization": f"Bearer {tok}"}
        s = requests.Session()
        patient, media = seed(base, s)
        pid = patient.split("/")[1]
        search = {"subject": patient, "_count": str(IMAGES)}
        found = s.get(f"{gw}/Media", params=search, headers=auth, timeout=300).json()
        released = len(found.get("entry", []))
        print(f"server {base}; {released} of {IMAGES} images released through the gateway")
        latency(
            "non-image read",
            lambda: s.get(f"{base}/Patient/{pid}"),
            lambda: s.get(f"{gw}/Patient/{pid}", headers=auth),
            args.n,
        )
        latency(
            "image read",
            lambda: s.get(f"{base}/{media[0]}"),
            lambda: s.get(f"{gw}/{media[0]}", headers=auth),
            args.n,
        )
        via = latency(
            "image search 100",
            lambda: s.get(f"{base}/Media", params=search),
            lambda: s.get(f"{gw}/Media", params=search, headers=auth),
            args.search_n,
        )
        trail = env.get("FHIR_IMAGES_AUDIT", "")
        audit_file = Path(trail[len("file:") :]) if trail.startswith("file:") else None
        floor(
            "image search 100",
            audit_first_floor(base, s, search, audit_file),
            via,
            args.search_n,
        )
        for clients in (4, 16):
            for name, path in (
                ("non-image read", lambda i: f"Patient/{pid}"),
                ("image read", lambda i: media[i % IMAGES]),
            ):
                direct = throughput(
                    lambda ss, i, path=path: ss.get(f"{base}/{path(i)}"), clients, args.per_client
                )
                via = throughput(
                    lambda ss, i, path=path: ss.get(f"{gw}/{path(i)}", headers=auth),
                    clients,
                    args.per_client,
                )
                print(
                    f"{clients:2d} clients {name:15s} direct {direct:7.1f} req/s | gateway "
                    f"{via:7.1f} req/s | ratio {via / direct:5.2f}"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
