"""Delivery to a FHIR server: push against a floor and a naive client, at the same concurrency.

    FHIR_BASE_URL=http://127.0.0.1:8080/fhir python bench/bench_push.py [--count 100] [--rounds 5]

Same photos (synthetic, 0.5-4 MB), same server, same number of workers for all, one run:
  ours:  ``push``: Binary upload (as the server allows), labels, transaction with conditional
         creates, read-back of labels and links (``--verify``, the default ``links``);
  full:  ``push --verify full``: the same and every byte read back (on a patient of its own);
  naive: what most hand-written clients do: POST Media with the image inlined as base64,
         then POST Consent and POST Provenance (R4 servers only: R5 has no Media);
  floor: the least any client must send: each photo as a Binary (raw where the server takes
         raw bytes, else FHIR JSON with base64 data), nothing else.
The server is warmed first; then they run in rounds, their order alternating (A B C D, D C B A,
...), each round on a new patient (so push stores new records). One JSON line per round, then
the median of each ratio and its spread. ``--video-mb`` adds the peak memory (VmHWM) of a child
process pushing one video, against the same child idle. HAPI holds an uploaded Binary in its
heap: for a 300 MB video start it with a larger heap, e.g.
HAPI_JAVA_OPTS="-Xmx6g -XX:TieredStopAtLevel=1 -XX:+UseSerialGC" servers/hapi/hapi.sh start.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import requests

from fhir_images import (
    ClinicalContext,
    FhirClient,
    Outbox,
    ingest,
    parse_consent,
    parse_context,
    push,
    synthetic,
)

CONSENT = {
    "given_by": "patient",
    "date": "2026-01-01T00:00:00Z",
    "taken_by": "Practitioner/bench",
    "method": "written",
    "discussion": "bench",
    "explained": {"why": True, "form": True, "secure_storage": True},
    "permissions": {"view": True, "store": True},
}


def context(patient: str, kind: str = "photo") -> ClinicalContext:
    return parse_context(
        {
            "patient": patient,
            "birth_date": "1980-01-01",
            "made_by": "clinician",
            "operator": "Practitioner/bench",
            "kind": kind,
            "intimate": False,
            "purpose": "Benchmark",
        }
    )


def photo(target_bytes: int, seed: int) -> bytes:
    """A noisy JPEG of about ``target_bytes`` (noise keeps JPEG from compressing it away)."""
    from PIL import Image

    side = int((target_bytes / 0.45) ** 0.5)  # about 0.45 bytes a pixel at quality 90 with noise
    base = synthetic.picture(side, side * 3 // 4, seed=seed)
    noise = Image.effect_noise(base.size, 40).convert("RGB")
    out = io.BytesIO()
    Image.blend(base, noise, 0.25).save(out, "JPEG", quality=90)
    return out.getvalue()


def seed_server(base: str, patient_id: str) -> None:
    s = requests.Session()
    for ref, body in (
        (f"Patient/{patient_id}", {"resourceType": "Patient", "id": patient_id}),
        ("Practitioner/bench", {"resourceType": "Practitioner", "id": "bench"}),
    ):
        s.put(
            f"{base}/{ref}",
            json=body,
            headers={"Content-Type": "application/fhir+json"},
            timeout=60,
        ).raise_for_status()


_local = threading.local()


def _session() -> requests.Session:
    """One keep-alive session per worker thread (as push has)."""
    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    return _local.s  # type: ignore[no-any-return]


def concurrently(one: Callable[[Path], None], files: list[Path], workers: int) -> float:
    """Seconds to run ``one`` over ``files`` with ``workers`` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, files))
    return time.perf_counter() - started


def naive(base: str, patient: str, f: Path) -> None:
    s = _session()
    h = {"Content-Type": "application/fhir+json"}
    data = f.read_bytes()
    media = {
        "resourceType": "Media",
        "status": "completed",
        "subject": {"reference": patient},
        "content": {"contentType": "image/jpeg", "data": base64.b64encode(data).decode()},
    }
    r = s.post(f"{base}/Media", data=json.dumps(media), headers=h, timeout=120)
    r.raise_for_status()
    mid = r.headers["Location"].split("/_history")[0].rsplit("/", 1)[-1]
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "59284-0"}]}],
        "patient": {"reference": patient},
        "policyRule": {"text": "x"},
        "provision": {
            "data": [{"meaning": "instance", "reference": {"reference": f"Media/{mid}"}}]
        },
    }
    s.post(f"{base}/Consent", data=json.dumps(consent), headers=h, timeout=60).raise_for_status()
    prov = {
        "resourceType": "Provenance",
        "target": [{"reference": f"Media/{mid}"}],
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/bench"}}],
    }
    s.post(f"{base}/Provenance", data=json.dumps(prov), headers=h, timeout=60).raise_for_status()


def floor(base: str, f: Path, raw: bool) -> None:
    """The least any client must send: a file as a Binary, raw where the server takes raw
    bytes, else as the FHIR JSON with base64 data it requires (built in memory: small files)."""
    s = _session()
    if raw:
        with f.open("rb") as body:
            s.post(
                f"{base}/Binary", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120
            ).raise_for_status()
        return
    resource = {
        "resourceType": "Binary",
        "contentType": "image/jpeg",
        "data": base64.b64encode(f.read_bytes()).decode(),
    }
    s.post(
        f"{base}/Binary",
        data=json.dumps(resource),
        headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
        timeout=120,
    ).raise_for_status()


VIDEO_CHILD = r"""
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar
mode, base, outbox = sys.argv[1], sys.argv[2], sys.argv[3]
from fhir_images import FhirClient, Outbox, push
if mode == "push":
    [r] = push(FhirClient(base), Outbox(outbox), workers=1)
    assert r.delivered, r.error
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(hwm * 1024)
"""


def video_memory(base: str, patient: str, mb: int, work: Path) -> dict[str, int]:
    seed_server(base, patient.split("/", 1)[1])  # a server may insist the patient exists
    video = synthetic.write_mp4(work / "video.mp4", mb << 20)
    outbox = Outbox(work / "video-outbox")
    ingest(video, context(patient, "video"), parse_consent(CONSENT), outbox=outbox)
    video.unlink()

    def child(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", VIDEO_CHILD, mode, base, str(outbox.root)],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            sys.exit(f"video push failed:\n{out.stderr[-2000:]}")
        return int(out.stdout.strip().splitlines()[-1])

    idle = child("idle")
    peak = child("push")
    return {"file_bytes": mb << 20, "peak_rss_bytes": peak, "idle_rss_bytes": idle}


class ProfilingSession(requests.Session):
    """A session that adds up, by kind of request, how many were sent and how long each took
    (to the end of its body where the body is streamed): the profile of push."""

    totals: ClassVar[dict[str, list[float]]] = {}
    lock = threading.Lock()

    @staticmethod
    def kind(method: str, url: str, base: str) -> str:
        path = url[len(base) :].split("?")[0].strip("/")
        parts = path.split("/") if path else []
        query = "?" in url
        if method == "POST" and not parts:
            return "transaction"
        if parts and parts[-1].startswith("$"):
            return f"{parts[-1]} ({parts[0]})"
        if parts[:1] == ["Binary"]:
            return {
                "GET": "Binary read (bytes)",
                "PUT": "Binary upload",
                "POST": "Binary upload",
            }.get(method, f"Binary {method}")
        if method == "GET":
            return "search" if query or len(parts) == 1 else f"read {parts[0]}"
        return f"{method} {parts[0] if parts else ''}".strip()

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        started = time.perf_counter()
        response = super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]
        base = getattr(self, "base", "")
        key = self.kind(method.upper(), url, base)
        if kwargs.get("stream"):
            inner = response.iter_content

            def counted(*a: object, **k: object):  # type: ignore[no-untyped-def]
                yield from inner(*a, **k)  # type: ignore[arg-type]
                self.add(key, time.perf_counter() - started)

            response.iter_content = counted  # type: ignore[method-assign]
        else:
            self.add(key, time.perf_counter() - started)
        return response

    @classmethod
    def add(cls, key: str, seconds: float) -> None:
        with cls.lock:
            cls.totals.setdefault(key, []).append(seconds)


def profile_push(base: str, files: list[Path], workers: int) -> dict[str, object]:
    """One push of ``files`` on a new patient with every request timed by kind."""
    pid = f"bench-{time.time_ns()}"
    seed_server(base, pid)
    ProfilingSession.totals = {}

    def factory() -> requests.Session:
        s = ProfilingSession()
        s.base = base  # type: ignore[attr-defined]
        return s

    with tempfile.TemporaryDirectory() as d:
        outbox = Outbox(Path(d) / "outbox")
        for p in files:
            ingest(p, context(f"Patient/{pid}"), parse_consent(CONSENT), outbox=outbox)
        client = FhirClient(base, pool_size=workers, session_factory=factory)
        started = time.perf_counter()
        results = push(client, outbox, workers=workers)
        wall = time.perf_counter() - started
        client.close()
    assert all(r.delivered for r in results), [r.error for r in results if not r.delivered]
    busy = sum(sum(v) for v in ProfilingSession.totals.values())
    kinds = {
        k: {
            "requests": len(v),
            "per_image": round(len(v) / len(files), 2),
            "seconds": round(sum(v), 2),
            "share": round(sum(v) / busy, 3),
        }
        for k, v in sorted(ProfilingSession.totals.items(), key=lambda kv: -sum(kv[1]))
    }
    return {"bench": "push-profile", "images": len(files), "wall_s": round(wall, 2), "kinds": kinds}


def one_round(
    base: str,
    files: list[Path],
    workers: int,
    order: list[str],
    raw: bool,
    naive_ok: bool,
    verify: str = "links",
) -> dict[str, float]:
    """Time floor, naive and push once each, in ``order``, on a new patient; ``full`` in the
    order is push verifying every byte, on a patient of its own."""
    pid = f"bench-{time.time_ns()}"
    patient = f"Patient/{pid}"
    seed_server(base, pid)
    with tempfile.TemporaryDirectory() as d:
        outbox = Outbox(Path(d) / "outbox")
        for p in files:
            ingest(p, context(patient), parse_consent(CONSENT), outbox=outbox)
        full_outbox = Outbox(Path(d) / "outbox-full")
        if "full" in order:
            full_pid = f"bench-full-{time.time_ns()}"
            seed_server(base, full_pid)
            for p in files:
                ingest(
                    p, context(f"Patient/{full_pid}"), parse_consent(CONSENT), outbox=full_outbox
                )
        client = FhirClient(base, pool_size=workers)
        times: dict[str, float] = {}
        for name in order:
            if name == "floor":
                times[name] = concurrently(lambda f: floor(base, f, raw), files, workers)
            elif name == "naive" and naive_ok:
                times[name] = concurrently(lambda f: naive(base, patient, f), files, workers)
            elif name in ("ours", "full"):
                started = time.perf_counter()
                results = push(
                    client,
                    outbox if name == "ours" else full_outbox,
                    workers=workers,
                    verify=verify if name == "ours" else "full",  # type: ignore[arg-type]
                )
                times[name] = time.perf_counter() - started
                failed = [r for r in results if not r.delivered]
                if failed:
                    sys.exit(f"{len(failed)} deliveries failed: {failed[0].error}")
        client.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.environ.get("FHIR_BASE_URL"))
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--video-mb", type=int, default=0, help="Also a video's peak memory.")
    ap.add_argument(
        "--profile", action="store_true", help="Only profile one push by kind of request."
    )
    ap.add_argument(
        "--verify",
        choices=["full", "links"],
        default="links",
        help="push's verification mode (the default: links); every round also times push "
        "with --verify full on a patient of its own, unless --no-full.",
    )
    ap.add_argument(
        "--no-full", action="store_true", help="Do not also time push with --verify full."
    )
    args = ap.parse_args()
    if not args.server:
        sys.exit("give --server or set FHIR_BASE_URL")
    base = args.server.rstrip("/")
    rng = random.Random(7)
    report = FhirClient(base).report()
    raw = bool(report.binary_raw_upload)
    naive_ok = report.fhir_version.startswith("4.0")
    machine = f"{os.cpu_count()} cores"
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        files = []
        for i in range(args.count):
            p = work / f"p{i}.jpg"
            p.write_bytes(photo(rng.randint(512 << 10, 4 << 20), seed=i))
            files.append(p)
        total = sum(p.stat().st_size for p in files)
        if args.profile:
            one_round(base, files[:8], args.workers, ["ours"], raw, naive_ok)  # warm
            profile = profile_push(base, files, args.workers)
            for kind, figures in profile["kinds"].items():  # type: ignore[attr-defined]
                print(f"  {kind:32} {figures}")
            print(json.dumps(profile))
            return
        # a warm server: every path once, not counted
        contenders = ["floor", "naive", "ours"] + ([] if args.no_full else ["full"])
        one_round(base, files[:8], args.workers, contenders, raw, naive_ok)
        rounds = []
        for i in range(args.rounds):
            order = contenders if i % 2 == 0 else list(reversed(contenders))
            t = one_round(base, files, args.workers, order, raw, naive_ok, args.verify)
            line = {
                "bench": "push-round",
                "round": i + 1,
                "order": order,
                "photos": args.count,
                "bytes": total,
                "workers": args.workers,
                "verify": args.verify,
                "fhir_version": report.fhir_version,
                **{f"{k}_s": round(v, 2) for k, v in t.items()},
                "ours_vs_floor": round(t["ours"] / t["floor"], 3),
            }
            if "full" in t:
                line["full_vs_floor"] = round(t["full"] / t["floor"], 3)
            if "naive" in t:
                line["naive_vs_ours"] = round(t["naive"] / t["ours"], 3)
                # what bounds naive / ours: ours can be no faster than the floor
                line["naive_vs_floor"] = round(t["naive"] / t["floor"], 3)
            print(json.dumps(line), flush=True)
            rounds.append(line)
        mem = (
            video_memory(base, f"Patient/bench-video-{time.time_ns()}", args.video_mb, work)
            if args.video_mb
            else None
        )

    def summary(key: str) -> dict[str, float] | None:
        values = [r[key] for r in rounds if key in r]
        if not values:
            return None
        return {
            "median": round(statistics.median(values), 3),
            "min": min(values),
            "max": max(values),
        }

    figures = {
        "bench": "push",
        "server": report.software,
        "server_version": report.software_version,
        "fhir_version": report.fhir_version,
        "machine": machine,
        "photos": args.count,
        "bytes": total,
        "workers": args.workers,
        "verify": args.verify,
        "rounds": args.rounds,
        "ours_vs_floor": summary("ours_vs_floor"),
        "full_vs_floor": summary("full_vs_floor"),
        "naive_vs_ours": summary("naive_vs_ours"),
        "naive_vs_floor": summary("naive_vs_floor"),
    }
    if mem:
        figures["video"] = mem
    ovf = figures["ours_vs_floor"]
    print(
        f"{args.count} photos ({total / 2**20:.0f} MB), {args.workers} workers for all, "
        f"{args.rounds} alternating rounds on {report.software} {report.software_version} "
        f"(FHIR {report.fhir_version}), {machine}:"
    )
    assert isinstance(ovf, dict)
    print(
        f"  ours ({args.verify}) / floor: median {ovf['median']} "
        f"(min {ovf['min']}, max {ovf['max']})"
    )
    fvf = figures["full_vs_floor"]
    if isinstance(fvf, dict):
        print(f"  full / floor: median {fvf['median']} (min {fvf['min']}, max {fvf['max']})")
    nvo = figures["naive_vs_ours"]
    if isinstance(nvo, dict):
        print(f"  naive / ours: median {nvo['median']} (min {nvo['min']}, max {nvo['max']})")
    nvf = figures["naive_vs_floor"]
    if isinstance(nvf, dict):
        print(f"  naive / floor: median {nvf['median']} (min {nvf['min']}, max {nvf['max']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
