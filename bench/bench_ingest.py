"""Ingest to the outbox: wall time and peak memory, as ratios against baselines run alongside.

    python bench/bench_ingest.py [--video-mb 300] [--repeat 3]

Each measurement runs in a fresh child process so its peak RSS (VmHWM) is its own.
Baselines, measured in the same run on the same files:
  time:   copying the file and hashing it with SHA-256 (the floor for any intake);
  memory: a child that imports fhir_images and does nothing else.
Prints a table and one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import hashlib, json, sys, time
from pathlib import Path
mode, src, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import fhir_images
from fhir_images import Outbox, ingest, parse_consent, parse_context
ctx = parse_context({"patient": "Patient/bench", "birth_date": "1980-01-01", "made_by": "clinician",
    "operator": "Practitioner/b", "kind": "video" if src.suffix == ".mp4" else "photo",
    "intimate": False, "purpose": "Benchmark"})
consent = parse_consent({"given_by": "patient", "date": "2026-01-01T00:00:00Z",
    "taken_by": "Practitioner/b", "method": "written", "discussion": "bench",
    "explained": {"why": True, "form": True, "secure_storage": True},
    "permissions": {"view": True, "store": True}})
t = time.perf_counter()
if mode == "ingest":
    r = ingest(src, ctx, consent, outbox=Outbox(work / "outbox"))
    assert r.decision.outcome.value == "store", r.decision
elif mode == "copy":
    h = hashlib.sha256()
    with src.open("rb") as f, (work / "copy").open("wb") as out:
        while chunk := f.read(1 << 20):
            h.update(chunk); out.write(chunk)
elif mode == "idle":
    pass
elapsed = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": elapsed, "max_rss_kb": hwm}))
"""


def run_child(mode: str, src: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(src), work],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_photo(path: Path) -> None:
    from PIL import Image

    # noise compresses badly, so a 12 MP JPEG lands near 4 MB like a phone photo
    from fhir_images import synthetic

    base = synthetic.picture(4000, 3000)
    noise = Image.effect_noise((4000, 3000), 40).convert("RGB")
    Image.blend(base, noise, 0.25).save(
        path, "JPEG", quality=90, exif=synthetic._exif(gps=True, orientation=6, device=True)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video-mb", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from fhir_images import synthetic

    results = {}
    with tempfile.TemporaryDirectory() as d:
        photo = Path(d) / "photo.jpg"
        make_photo(photo)
        video = synthetic.write_mp4(Path(d) / "video.mp4", args.video_mb << 20)
        idle = run_child("idle", photo)
        for name, src in (("photo", photo), ("video", video)):
            ingest_runs = [run_child("ingest", src) for _ in range(args.repeat)]
            copy_runs = [run_child("copy", src) for _ in range(args.repeat)]
            t_ingest = statistics.median(r["seconds"] for r in ingest_runs)
            t_copy = statistics.median(r["seconds"] for r in copy_runs)
            rss = max(r["max_rss_kb"] for r in ingest_runs) * 1024
            results[name] = {
                "file_bytes": src.stat().st_size,
                "ingest_s": round(t_ingest, 4),
                "copy_hash_s": round(t_copy, 4),
                "time_ratio_vs_copy_hash": round(t_ingest / t_copy, 2),
                "peak_rss_bytes": rss,
                "idle_rss_bytes": idle["max_rss_kb"] * 1024,
                "rss_over_idle_bytes": rss - idle["max_rss_kb"] * 1024,
                "rss_over_idle_vs_file": round(
                    (rss - idle["max_rss_kb"] * 1024) / src.stat().st_size, 3
                ),
            }
    print(
        f"{'file':6} {'MB':>7} {'ingest s':>9} {'copy+hash s':>12} {'ratio':>6} "
        f"{'peak RSS MB':>12} {'over idle MB':>13} {'over idle / file':>17}"
    )
    for name, r in results.items():
        print(
            f"{name:6} {r['file_bytes'] / 2**20:7.1f} {r['ingest_s']:9.3f} "
            f"{r['copy_hash_s']:12.3f} {r['time_ratio_vs_copy_hash']:6.2f} "
            f"{r['peak_rss_bytes'] / 2**20:12.1f} {r['rss_over_idle_bytes'] / 2**20:13.1f} "
            f"{r['rss_over_idle_vs_file']:17.3f}"
        )
    print(json.dumps({"bench": "ingest", "cpus": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
