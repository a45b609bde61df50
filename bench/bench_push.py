"""Delivery to a FHIR server: our push against a naive client and against the floor.

    FHIR_BASE_URL=http://127.0.0.1:8080/fhir python bench/bench_push.py [--count 200]

Same photos (synthetic, 0.5-4 MB), same server, one run:
  ours:  ``push`` with 4 workers: raw Binary upload, labels, transaction with conditional
         creates, read-back of labels, links and bytes;
  naive: what most hand-written clients do: POST Media with the image inlined as base64,
         then POST Consent and POST Provenance, one request per resource, one at a time;
  floor: plain POSTs of the same bytes to /Binary, one at a time, nothing else.
Then peak memory (VmHWM) of a child process pushing one 300 MB video, against the same
child idle. Prints a table and one JSON line. HAPI holds an uploaded Binary in its heap, so
for the 300 MB video start it with a larger heap, e.g.
HAPI_JAVA_OPTS="-Xmx6g -XX:TieredStopAtLevel=1 -XX:+UseSerialGC" servers/hapi/hapi.sh start.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from fhir_images import FhirClient, Outbox, ingest, parse_consent, parse_context, push, synthetic

CONSENT = {
    "given_by": "patient",
    "date": "2026-01-01T00:00:00Z",
    "taken_by": "Practitioner/bench",
    "method": "written",
    "discussion": "bench",
    "explained": {"why": True, "form": True, "secure_storage": True},
    "permissions": {"view": True, "store": True},
}


def context(patient: str, kind: str = "photo") -> object:
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


def naive(base: str, patient: str, files: list[Path]) -> None:
    s = requests.Session()
    h = {"Content-Type": "application/fhir+json"}
    for f in files:
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
        s.post(
            f"{base}/Consent", data=json.dumps(consent), headers=h, timeout=60
        ).raise_for_status()
        prov = {
            "resourceType": "Provenance",
            "target": [{"reference": f"Media/{mid}"}],
            "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/bench"}}],
        }
        s.post(
            f"{base}/Provenance", data=json.dumps(prov), headers=h, timeout=60
        ).raise_for_status()


def floor(base: str, files: list[Path], raw: bool) -> None:
    """The least any client must send: each file as a Binary, raw where the server takes raw
    bytes, else as the FHIR JSON with base64 data it requires (built in memory: small files)."""
    s = requests.Session()
    for f in files:
        if raw:
            with f.open("rb") as body:
                s.post(
                    f"{base}/Binary", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120
                ).raise_for_status()
            continue
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
from pathlib import Path
mode, base, outbox = sys.argv[1], sys.argv[2], sys.argv[3]
from fhir_images import FhirClient, Outbox, push
if mode == "push":
    [r] = push(FhirClient(base), Outbox(outbox), workers=1)
    assert r.delivered, r.error
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(hwm * 1024)
"""


def video_memory(base: str, patient: str, mb: int, work: Path) -> dict[str, int]:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.environ.get("FHIR_BASE_URL"))
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--video-mb", type=int, default=300)
    ap.add_argument("--video-only", action="store_true", help="Only the video's peak memory.")
    args = ap.parse_args()
    if not args.server:
        sys.exit("give --server or set FHIR_BASE_URL")
    base = args.server.rstrip("/")
    rng = random.Random(7)
    pid = f"bench-{int(time.time())}"
    patient = f"Patient/{pid}"
    seed_server(base, pid)
    if args.video_only:
        with tempfile.TemporaryDirectory() as d:
            mem = video_memory(base, patient, args.video_mb, Path(d))
        over = mem["peak_rss_bytes"] - mem["idle_rss_bytes"]
        print(
            f"{args.video_mb} MB video push: peak RSS {mem['peak_rss_bytes'] >> 20} MB, idle "
            f"{mem['idle_rss_bytes'] >> 20} MB, over idle {over / mem['file_bytes']:.3f} "
            "of the file"
        )
        print(json.dumps({"bench": "push-video", "server": base, "video": mem}))
        return
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        files = []
        for i in range(args.count):
            p = work / f"p{i}.jpg"
            p.write_bytes(photo(rng.randint(512 << 10, 4 << 20), seed=i))
            files.append(p)
        outbox = Outbox(work / "outbox")
        for p in files:
            ingest(p, context(patient), parse_consent(CONSENT), outbox=outbox)
        stored = sorted(e.content_path for e in outbox.entries("ready"))
        total = sum(p.stat().st_size for p in stored)

        raw = bool(FhirClient(base).report().binary_raw_upload)
        # warm the server's JIT a little, the same for all three
        floor(base, stored[:5], raw)

        t = time.perf_counter()
        floor(base, stored, raw)
        t_floor = time.perf_counter() - t

        t = time.perf_counter()
        naive(base, patient, stored)
        t_naive = time.perf_counter() - t

        client = FhirClient(base, pool_size=args.workers)
        t = time.perf_counter()
        results = push(client, outbox, workers=args.workers)
        t_ours = time.perf_counter() - t
        failed = [r for r in results if not r.delivered]
        if failed:
            sys.exit(f"{len(failed)} deliveries failed: {failed[0].error}")

        print(
            f"{args.count} photos, {total / 2**20:.0f} MB: floor {t_floor:.2f} s, "
            f"naive {t_naive:.2f} s, ours {t_ours:.2f} s",
            flush=True,
        )
        mem = video_memory(base, patient, args.video_mb, work)

    figures = {
        "photos": args.count,
        "bytes": total,
        "workers": args.workers,
        "floor_s": round(t_floor, 2),
        "naive_s": round(t_naive, 2),
        "ours_s": round(t_ours, 2),
        "ours_vs_floor": round(t_ours / t_floor, 2),
        "naive_vs_ours": round(t_naive / t_ours, 2),
        "video": mem,
        "video_peak_over_idle_vs_file": round(
            (mem["peak_rss_bytes"] - mem["idle_rss_bytes"]) / mem["file_bytes"], 3
        ),
    }
    print(f"{args.count} photos, {total / 2**20:.0f} MB")
    print(f"  floor (raw POST /Binary, sequential): {t_floor:7.2f} s")
    print(f"  naive (base64 Media + Consent + Provenance, sequential): {t_naive:7.2f} s")
    print(f"  ours (push, {args.workers} workers, verified): {t_ours:7.2f} s")
    print(
        f"  ours / floor = {figures['ours_vs_floor']}   naive / ours = {figures['naive_vs_ours']}"
    )
    print(
        f"{args.video_mb} MB video push: peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MB, "
        f"idle {mem['idle_rss_bytes'] / 2**20:.0f} MB"
    )
    print(json.dumps({"bench": "push", **figures}))


if __name__ == "__main__":
    main()
