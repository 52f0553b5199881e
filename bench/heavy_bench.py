"""Benchmark the heavy steps on this machine: transcode speed and embedding throughput.

    python -m bench.heavy_bench [--audio-seconds 600] [--chunks 400] [--threads 1 2]

Transcode: a generated stereo MP3 (pink noise under a tone, 128 kbit/s, 44.1 kHz) becomes the
two HLS renditions; reported as times real time, with ffmpeg's peak RSS. Embedding: chunks of a
synthetic transcript (~120 words each, as the embed step cuts them) through all-MiniLM-L6-v2
int8 on onnxruntime; reported as chunks/s per thread count, with this process's peak RSS
(model loaded). Prints one JSON document; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from worker.heavy import embed, transcode  # noqa: E402

WORDS = [
    "grace",
    "faith",
    "hope",
    "love",
    "mercy",
    "church",
    "prayer",
    "forgiveness",
    "kingdom",
    "neighbour",
    "shepherd",
    "light",
    "river",
    "bread",
    "covenant",
    "promise",
    "spirit",
    "gospel",
    "story",
    "parable",
    "servant",
    "peace",
    "joy",
    "patience",
    "kindness",
    "family",
    "morning",
    "service",
    "community",
    "harvest",
    "journey",
    "wilderness",
    "mountain",
    "garden",
]


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)  # ru_maxrss is KiB on Linux


def bench_transcode(seconds: int, work: Path) -> dict[str, Any]:
    src = work / "bench.mp3"
    subprocess.run(
        [
            transcode.ffmpeg_exe(),
            *("-hide_banner", "-nostdin", "-v", "error", "-y"),
            *("-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.2:duration={seconds}"),
            *("-f", "lavfi", "-i", f"sine=frequency=220:duration={seconds}"),
            *("-filter_complex", "amix=inputs=2", "-ac", "2", "-ar", "44100"),
            *("-c:a", "libmp3lame", "-b:a", "128k", str(src)),
        ],
        check=True,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = transcode.transcode_file(src, work / "hls")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "audio_s": seconds,
        "renditions": [r["name"] for r in result["renditions"]],
        "wall_s": round(wall, 2),
        "x_realtime": round(seconds / wall, 1),
        "cpu_s": round(cpu, 2),
        "audio_s_per_cpu_s": round(seconds / cpu, 1),
        "ffmpeg_peak_rss_mib": _mib(after.ru_maxrss),
        "output_mib": round(sum(p.stat().st_size for p in (work / "hls").rglob("*")) / 2**20, 2),
    }


def _transcript(chunks: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    segs, t = [], 0.0
    for _ in range(chunks * 8):  # ~15 words a segment, ~8 segments a chunk
        text = " ".join(rng.choice(WORDS) for _ in range(15)) + "."
        segs.append({"start": t, "end": t + 5.0, "text": text})
        t += 5.0
    return segs


def bench_embed(chunks: int, threads: list[int]) -> dict[str, Any]:
    segs = _transcript(chunks)
    cut = embed.chunk(segs)
    texts = [c.text for c in cut]
    out: dict[str, Any] = {
        "chunks": len(texts),
        "words_per_chunk": round(sum(len(t.split()) for t in texts) / len(texts)),
    }
    for n in threads:
        start = time.perf_counter()
        model = embed.Embedder(threads=n)
        load = time.perf_counter() - start
        model.embed(texts[:8])  # warm-up
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        vectors = model.embed(texts)
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        index = embed.Index(vectors=vectors, chunks=cut)
        (q,) = model.embed(["what does the parable of the shepherd teach about mercy"])
        start = time.perf_counter()
        for _ in range(100):
            index.search(q, 5)
        search_ms = (time.perf_counter() - start) * 10
        out[f"threads_{n}"] = {
            "model_load_s": round(load, 2),
            "chunks_per_s": round(len(texts) / wall, 1),
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            # Less sensitive to other processes on the machine than chunks/s.
            "chunks_per_cpu_s": round(len(texts) / cpu, 1),
            "search_top5_ms": round(search_ms, 3),
        }
    out["peak_rss_mib"] = _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio-seconds", type=int, default=600)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    try:
        report = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                # Other processes competing for the CPUs make every number here pessimistic.
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            },
            "transcode": bench_transcode(args.audio_seconds, work),
            "embed": bench_embed(args.chunks, args.threads),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
