"""Benchmark the heavy steps on this machine: transcode speed and embedding throughput.

    python -m bench.heavy_bench [--audio-seconds 600] [--chunks 400] [--threads 1 2]
        [--repeat 3] [--chunk-s 60] [--only transcode|embed]

Transcode: a generated stereo MP3 (pink noise under a tone, 128 kbit/s, 44.1 kHz) becomes the
two HLS renditions, `--repeat` times each way, alternating: the transcode task as the tasks
process runs it (download, chunked encode, uploads, playlists; S3 is a local directory) and the
bare ffmpeg command with the same encoder settings; reported as times real time and audio seconds
per CPU-second (this process and its children), with the ratio step / bare and the load average
around each run. Embedding: chunks of a
synthetic transcript (~120 words each, as the embed step cuts them) through all-MiniLM-L6-v2
int8 on onnxruntime; reported as chunks/s per thread count, with this process's peak RSS
(model loaded). Prints one JSON document; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import io
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
from worker.heavy.common import TaskContext  # noqa: E402

DEFAULT_CHUNK_S = transcode.DEFAULT_CHUNK_S

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


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def bare_args(src: Path, out: Path) -> list[str]:
    """The bare tool: one ffmpeg, the step's encoder settings, every rendition, no chunks."""
    args = [transcode.ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error"]
    args += ["-i", str(src)]
    for r in transcode.RENDITIONS:
        (out / r.name).mkdir(parents=True, exist_ok=True)
        args += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-c:a", "aac", "-b:a", f"{r.bitrate_kbps}k"]
        args += ["-ac", str(r.channels), "-ar", str(r.sample_rate)]
        args += ["-f", "hls", "-hls_time", str(transcode.SEGMENT_S), "-hls_playlist_type", "vod"]
        args += ["-hls_segment_filename", str(out / r.name / "seg_%05d.ts")]
        args += [str(out / r.name / "index.m3u8")]
    return args


class LocalS3:
    """The S3 calls the transcode task makes, on a local directory: the step minus the network
    (boto3's own per-request CPU is left out too)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def head_object(self, *, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        stat = self._path(Bucket, Key).stat()
        return {"ContentLength": stat.st_size, "ETag": f'"{stat.st_mtime_ns}"'}

    def download_file(self, bucket: str, key: str, path: str, **_: Any) -> None:
        shutil.copyfile(self._path(bucket, key), path)

    def upload_file(self, path: str, bucket: str, key: str, **_: Any) -> None:
        self._path(bucket, key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self._path(bucket, key))

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self._path(Bucket, Key).parent.mkdir(parents=True, exist_ok=True)
        self._path(Bucket, Key).write_bytes(Body)

    def get_object(self, *, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        return {"Body": io.BytesIO(self._path(Bucket, Key).read_bytes())}

    def get_paginator(self, _op: str) -> Any:
        root = self.root

        class Pages:
            def paginate(self, *, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                base = root / Bucket
                keys = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
                return [{"Contents": [{"Key": k} for k in sorted(keys) if k.startswith(Prefix)]}]

        return Pages()

    def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        for o in Delete["Objects"]:
            self._path(Bucket, o["Key"]).unlink(missing_ok=True)
        return {}


def make_source(seconds: int, work: Path) -> Path:
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
    return src


def _measure(seconds: int, fn: Any) -> dict[str, Any]:
    """Wall and CPU (this process and its children) of `fn()`, with the load around it."""
    load = os.getloadavg()[0]
    self0, kids0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    cpu = _cpu(resource.RUSAGE_SELF) - self0 + _cpu(resource.RUSAGE_CHILDREN) - kids0
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "x_realtime": round(seconds / wall, 1),
        "audio_s_per_cpu_s": round(seconds / cpu, 1),
        "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def bench_transcode(seconds: int, work: Path, repeat: int, chunk_s: int) -> dict[str, Any]:
    """The transcode task (download, chunked encode, uploads, playlists) against local files,
    and the bare ffmpeg command on the same file, alternating, `repeat` times."""
    src = make_source(seconds, work)
    s3 = LocalS3(work / "s3")
    (s3.root / "media" / "uploads").mkdir(parents=True)
    shutil.copyfile(src, s3.root / "media" / "uploads" / "bench.mp3")
    task = {
        "source": {"bucket": "media", "key": "uploads/bench.mp3"},
        "output": {"bucket": "media", "prefix": "hls/bench/"},
    }
    context = TaskContext(s3=s3, transcode_chunk_s=chunk_s)
    runs = []
    result: dict[str, Any] = {}
    bare_out = work / "bare"
    for _ in range(repeat):
        bare = _measure(seconds, lambda: subprocess.run(bare_args(src, bare_out), check=True))
        shutil.rmtree(bare_out)
        step = _measure(seconds, lambda: result.update(transcode.run(task, context)))
        shutil.rmtree(s3.root / "media" / "hls")
        runs.append(
            {
                "bare": bare,
                "step": step,
                "ratio_cpu": round(step["cpu_s"] / bare["cpu_s"], 3),
                "ratio_wall": round(step["wall_s"] / bare["wall_s"], 3),
            }
        )
    ratios = sorted(r["ratio_cpu"] for r in runs)
    return {
        "audio_s": seconds,
        "chunk_s": chunk_s,
        "renditions": [r["name"] for r in result["renditions"]],
        "segments": result["renditions"][0]["segments"],
        "runs": runs,
        "ratio_cpu_median": ratios[len(ratios) // 2],
        "ratio_wall_median": sorted(r["ratio_wall"] for r in runs)[len(runs) // 2],
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
    parser.add_argument("--repeat", type=int, default=3, help="transcode: step/bare pairs")
    parser.add_argument("--chunk-s", type=int, default=DEFAULT_CHUNK_S)
    parser.add_argument("--only", choices=["transcode", "embed"])
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
        }
        if args.only != "embed":
            report["transcode"] = bench_transcode(
                args.audio_seconds, work, args.repeat, args.chunk_s
            )
        if args.only != "transcode":
            report["embed"] = bench_embed(args.chunks, args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
