"""Transcode: one audio object -> HLS audio renditions at several bitrates plus a master playlist,
resumable from its last completed chunk of segments.

ffmpeg comes from the imageio-ffmpeg wheel (a static binary inside the package), so the worker
needs no system package and no download at run time.

Why chunks. A transcode interrupted by a deploy, a scale-in or a crash must resume where it
stopped and still write exactly what an uninterrupted run writes. Restarting one ffmpeg mid-stream
(`-ss`) cannot promise that: the AAC encoder's state (priming, psychoacoustic history, bit
reservoir) and the timestamps differ from those of a run that got there from the start. So every
run, interrupted or not, is the same computation: one ffmpeg decodes the source once to raw PCM
(f32, the renditions' sample rate) on a pipe, and the audio is cut into chunks of
`chunk_s` seconds rounded up to whole AAC frames (1024 samples). Each chunk is encoded by its own
ffmpeg (all renditions, one process) into whole HLS segments numbered from where the previous
chunk's ended (`-start_number`), timestamps continuing (`-output_ts_offset`). A resumed run
decodes from the start again (decoding is a few percent of encoding) and encodes only the chunks
that are not yet durable; the bytes it feeds each encoder are the same, so the segments are too.

Seamless joins. A fresh AAC encoder starts with 1024 samples of priming and ends on a padded
frame: joined naively, every chunk boundary would click and drift by ~35 ms. Instead each chunk's
encoder is also fed `PREROLL_FRAMES` frames of the audio before the chunk, and a bitstream filter
(`noise=drop=…`) drops the packets that belong to the pre-roll and those past the chunk's end, so
the packets kept tile the timeline exactly as one encoder's would (packet i has pts i * 1024):
across a join the decoder overlaps two frames that both saw the real signal on both sides.

Durability. After a chunk is encoded, its segments are uploaded under the output prefix and then
a small manifest (each segment's name, EXTINF and size) under `<prefix>.resume/<fingerprint>/`:
the manifest is the commit. The fingerprint covers the source (key, version, ETag, size), the
renditions, the segment and chunk lengths and the ffmpeg binary, so a changed input or setting
starts over instead of mixing outputs. The media playlists and the master (BANDWIDTH from the
manifests' sizes) are written last, then the manifests are deleted. Another instance picks the
task up with nothing of the first's disk: everything it needs is in S3.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from adapters.s3 import S3Location, Storage, location
from sluice.catalog import TRANSCODE_RESUME_DIR, TRANSCODE_TASK
from sluice.errors import BusinessError, TransientError
from worker.heavy.common import Limits, TaskContext, child, scratch_dir, signal_name

TASK_NAME = TRANSCODE_TASK
SEGMENT_S = 6
MASTER = "master.m3u8"
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
}
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_AUDIO = re.compile(r"Stream #\S+.*: Audio: (\w+)")
_EXTINF = re.compile(r"^#EXTINF:([\d.]+),", re.M)
# ffmpeg's own line when a signal made it stop early (it then exits 255, not by the signal).
_STOPPED = "received signal"
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Rendition:
    """One HLS variant: AAC-LC at `bitrate_kbps`."""

    name: str
    bitrate_kbps: int
    channels: int = 2
    sample_rate: int = 44_100


# Speech-first defaults: a low rung for mobile data, a high one for music and good connections.
RENDITIONS: tuple[Rendition, ...] = (
    Rendition("aac_64k", 64, channels=1),
    Rendition("aac_128k", 128, channels=2),
)


@dataclass(frozen=True)
class Probe:
    codec: str
    duration_s: float | None


def ffmpeg_exe() -> str:
    """The ffmpeg binary the imageio-ffmpeg wheel ships (IMAGEIO_FFMPEG_EXE overrides it)."""
    import imageio_ffmpeg  # imported late: the web process never needs it

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def probe(path: Path) -> Probe:
    """The audio codec and duration ffmpeg reads from the file's header.

    ffmpeg without an output exits non-zero by design; what matters is what it printed, unless
    a signal ended it.
    """
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    with child(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
    ) as proc:
        _, stderr = proc.communicate(timeout=PROBE_TIMEOUT_S)
    _check_not_stopped(proc.returncode, stderr)
    audio = _AUDIO.search(stderr)
    if audio is None:
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        raise BusinessError(f"not a readable audio file: {tail[0][:300]}", code="corrupt_audio")
    m = _DURATION.search(stderr)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None
    return Probe(codec=audio[1], duration_s=duration)


# A chunk's length by default (sluice.settings.TasksSettings.transcode_chunk_s).
DEFAULT_CHUNK_S = TaskContext.transcode_chunk_s
FRAME = 1024  # samples per AAC-LC packet
PREROLL_FRAMES = 4  # fed to a chunk's encoder before the chunk, then dropped (see the docstring)
_SAMPLE_BYTES = 4  # f32le
_WRITE_BYTES = 1 << 20
RESUME = TRANSCODE_RESUME_DIR
_LAYOUT = 1  # bump when what a chunk holds changes: older manifests are then ignored


@dataclass(frozen=True)
class Segment:
    """One segment file of one rendition, as its media playlist lists it."""

    name: str
    extinf: str  # ffmpeg's EXTINF value, kept as written so a rebuilt playlist is identical
    size: int


@dataclass(frozen=True)
class Chunk:
    """A run of whole segments per rendition, encoded by one ffmpeg; `final` ends the audio."""

    index: int
    final: bool
    segments: dict[str, list[Segment]]

    def to_json(self) -> bytes:
        doc = {
            "index": self.index,
            "final": self.final,
            "segments": {r: [asdict(s) for s in segs] for r, segs in self.segments.items()},
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Chunk:
        doc = json.loads(raw)
        segments = {r: [Segment(**s) for s in segs] for r, segs in doc["segments"].items()}
        return cls(index=int(doc["index"]), final=bool(doc["final"]), segments=segments)


def chunk_frames(chunk_s: float, sample_rate: int) -> int:
    """AAC frames per chunk: `chunk_s` rounded up to whole frames."""
    return math.ceil(chunk_s * sample_rate / FRAME)


def _pcm_format(renditions: Sequence[Rendition]) -> tuple[int, int]:
    """(sample rate, channels) of the PCM every rendition's encoder reads."""
    rates = {r.sample_rate for r in renditions}
    if len(rates) != 1:  # packets of different rates would not share chunk boundaries
        raise ValueError(f"renditions must share one sample rate, got {sorted(rates)}")
    return rates.pop(), max(r.channels for r in renditions)


def _decode_args(src: Path, rate: int, channels: int) -> list[str]:
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(src)]
    args += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", str(channels), "-ar", str(rate)]
    return [*args, "-f", "f32le", "pipe:1"]


def _encode_args(
    out: Path,
    renditions: Sequence[Rendition],
    *,
    index: int,
    rate: int,
    channels: int,
    skip: int,
    keep: int | None,
    first_sample: int,
    start_number: int,
) -> list[str]:
    """One chunk's encoder: PCM on stdin -> every rendition's segments from `start_number`.

    The first `skip` packets (the pre-roll) and any after `skip + keep` are dropped; the offset
    gives the first kept packet the pts one encoder over the whole audio would have given it.
    """
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error"]
    args += ["-f", "f32le", "-ar", str(rate), "-ac", str(channels), "-i", "pipe:0"]
    drops = ([f"lt(n\\,{skip})"] if skip else []) + (
        [f"gte(n\\,{skip + keep})"] if keep is not None else []
    )
    # The encoder gives packet j the pts (j - 1) * FRAME (its priming): shift so that the kept
    # packets carry first_sample, first_sample + FRAME, ... (the whole audio's packet i: i * FRAME).
    offset = (first_sample - skip * FRAME + FRAME) / rate
    for r in renditions:
        (out / r.name).mkdir(parents=True, exist_ok=True)
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", f"{r.bitrate_kbps}k"]
        args += ["-ac", str(r.channels)]
        if drops:
            args += ["-bsf:a", "noise=drop=" + "+".join(drops)]
        args += ["-output_ts_offset", f"{offset:.6f}"]
        args += ["-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_playlist_type", "vod"]
        args += ["-start_number", str(start_number)]
        args += ["-hls_segment_filename", str(out / r.name / "seg_%05d.ts")]
        args += [str(out / r.name / f"chunk_{index:05d}.m3u8")]
    return args


class _Pcm:
    """Reads the decoder's PCM in whole chunks, knowing whether a chunk is the last."""

    def __init__(self, stream: IO[bytes], progress: Callable[[], None]) -> None:
        self._stream, self._progress = stream, progress
        self._buf = bytearray()
        self._eof = False

    def take(self, size: int) -> tuple[bytes, bool]:
        """Up to `size` bytes, and whether nothing follows them."""
        while len(self._buf) <= size and not self._eof:
            block = self._stream.read(_WRITE_BYTES)
            if not block:
                self._eof = True
            self._buf += block
            self._progress()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data, self._eof and not self._buf


def encode(
    src: Path,
    out: Path,
    *,
    renditions: Sequence[Rendition] = RENDITIONS,
    chunk_s: float = DEFAULT_CHUNK_S,
    done: Sequence[Chunk] = (),
    on_chunk: Callable[[Chunk], None] = lambda _: None,
    progress: Callable[[], None] = lambda: None,
) -> list[Chunk]:
    """Every chunk of the audio, the `done` ones (durable already) kept and the rest encoded.

    `on_chunk` gets each newly encoded chunk once its segments are under `out` (the task makes
    it durable there); `progress` is called as the PCM flows.
    """
    chunks = list(done)
    if chunks and chunks[-1].final:  # all encoded: only the playlists are left
        return chunks
    rate, channels = _pcm_format(renditions)
    frame_bytes = FRAME * channels * _SAMPLE_BYTES
    frames = chunk_frames(chunk_s, rate)
    with (
        tempfile.TemporaryFile() as errors,
        child(_decode_args(src, rate, channels), stdout=subprocess.PIPE, stderr=errors) as dec,
        # The next chunk is decoded while this one is encoded (one chunk ahead, ~21 MB at 60 s).
        ThreadPoolExecutor(1, thread_name_prefix="transcode-decode") as reader,
    ):
        assert dec.stdout is not None
        _widen(dec.stdout)
        pcm = _Pcm(dec.stdout, progress)
        preroll = b""
        index = 0
        ahead = reader.submit(pcm.take, frames * frame_bytes)
        while True:
            data, final = ahead.result()
            if not final:
                ahead = reader.submit(pcm.take, frames * frame_bytes)
            if final:  # the decoder's end: its exit says whether that is the audio's end
                _decoded(dec, errors)
                if index == 0 and not data:
                    raise BusinessError("the audio decoded to no samples", code="corrupt_audio")
            if index >= len(done):
                chunk = _encode_chunk(
                    preroll + data,
                    out,
                    renditions,
                    index=index,
                    final=final,
                    rate=rate,
                    channels=channels,
                    skip=len(preroll) // frame_bytes,
                    keep=None if final else frames,
                    first_sample=index * frames * FRAME,
                    start_number=sum(len(c.segments[renditions[0].name]) for c in chunks),
                    progress=progress,
                )
                on_chunk(chunk)
                chunks.append(chunk)
            if final:
                return chunks
            preroll = data[-PREROLL_FRAMES * frame_bytes :]
            index += 1


def _widen(pipe: IO[bytes]) -> None:
    """A 1 MiB pipe instead of 64 KiB: 16 times fewer wake-ups of ffmpeg and this process per
    MiB of PCM (Linux F_SETPIPE_SZ; elsewhere, or above the system's limit, the default stays)."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _WRITE_BYTES)


def _decoded(dec: subprocess.Popen[bytes], errors: IO[bytes]) -> None:
    """Raise unless the decoder ended by itself, having decoded all of the audio."""
    returncode = dec.wait()
    errors.seek(0)
    err = errors.read().decode(errors="replace")
    _check_not_stopped(returncode, err)
    if returncode != 0:
        raise BusinessError(
            f"ffmpeg could not decode the audio: {err.strip()[-300:]}", code="corrupt_audio"
        )


def _encode_chunk(
    pcm: bytes,
    out: Path,
    renditions: Sequence[Rendition],
    *,
    index: int,
    final: bool,
    progress: Callable[[], None],
    **where: Any,
) -> Chunk:
    args = _encode_args(out, renditions, index=index, **where)
    with (
        tempfile.TemporaryFile() as errors,
        child(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors) as proc,
    ):
        assert proc.stdin is not None
        _widen(proc.stdin)
        try:
            for at in range(0, len(pcm), _WRITE_BYTES):
                proc.stdin.write(pcm[at : at + _WRITE_BYTES])
                progress()
            proc.stdin.close()
        except BrokenPipeError:  # it died: its exit status tells why
            pass
        returncode = proc.wait()
        errors.seek(0)
        err = errors.read().decode(errors="replace")
    _check_not_stopped(returncode, err)
    if returncode != 0:  # it read our own PCM: not the audio's fault, retry
        raise TransientError(f"ffmpeg could not encode: {err.strip()[-300:]}", code="ffmpeg_failed")
    segments = {}
    for r in renditions:
        listing = out / r.name / f"chunk_{index:05d}.m3u8"
        text = listing.read_text()
        listing.unlink()
        names = [line for line in text.splitlines() if line and not line.startswith("#")]
        segments[r.name] = [
            Segment(name, extinf, (out / r.name / name).stat().st_size)
            for name, extinf in zip(names, _EXTINF.findall(text), strict=True)
        ]
    return Chunk(index=index, final=final, segments=segments)


def _check_not_stopped(returncode: int, stderr: str) -> None:
    """A signal that ended ffmpeg (the OOM killer, a stop, our drain) says nothing about the
    audio: transient, so the workflow retries, never corrupt_audio."""
    if returncode < 0:
        raise TransientError(f"ffmpeg killed by {signal_name(returncode)}", code="ffmpeg_killed")
    if returncode != 0 and _STOPPED in stderr:
        raise TransientError(f"ffmpeg stopped: {stderr.strip()[-200:]}", code="ffmpeg_killed")


def media_playlist(segments: Sequence[Segment]) -> str:
    """A rendition's VOD playlist over all its chunks' segments."""
    target = max((int(float(s.extinf) + 0.5) for s in segments), default=SEGMENT_S)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}"]
    lines += ["#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:VOD"]
    for s in segments:
        lines += [f"#EXTINF:{s.extinf},", s.name]
    return "\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n"


def master_playlist(
    per_rendition: Mapping[str, Sequence[Segment]], renditions: Sequence[Rendition]
) -> str:
    """The master playlist, with BANDWIDTH measured from the segments actually written."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in renditions:
        segments = per_rendition[r.name]
        durations = [float(s.extinf) for s in segments]
        sizes = [s.size for s in segments]
        rates = [8 * s / d for s, d in zip(sizes, durations, strict=True) if d > 0]
        peak = round(max(rates, default=r.bitrate_kbps * 1000))
        average = round(8 * sum(sizes) / sum(durations)) if sum(durations) else peak
        lines.append(
            f'#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},CODECS="mp4a.40.2"'
        )
        lines.append(f"{r.name}/index.m3u8")
    return "\n".join(lines) + "\n"


def transcode_file(
    src: Path,
    out: Path,
    *,
    limits: Limits | None = None,
    renditions: Sequence[Rendition] = RENDITIONS,
    chunk_s: float = DEFAULT_CHUNK_S,
    done: Sequence[Chunk] = (),
    on_chunk: Callable[[Chunk], None] = lambda _: None,
    progress: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Local file -> HLS tree under `out` (master.m3u8 + one directory per rendition).

    With `done` (chunks durable elsewhere) only the rest is encoded; the playlists cover all.
    """
    limits = limits or Limits()
    info = probe(src)
    if info.duration_s is not None and info.duration_s > limits.max_audio_seconds:
        raise BusinessError(
            f"audio lasts {info.duration_s:.0f} s, more than {limits.max_audio_seconds} s",
            code="too_long",
        )
    chunks = encode(
        src,
        out,
        renditions=renditions,
        chunk_s=chunk_s,
        done=done,
        on_chunk=on_chunk,
        progress=progress,
    )
    per_rendition = {r.name: [s for c in chunks for s in c.segments[r.name]] for r in renditions}
    variants = []
    for r in renditions:
        (out / r.name).mkdir(parents=True, exist_ok=True)
        (out / r.name / "index.m3u8").write_text(media_playlist(per_rendition[r.name]))
        variants.append(
            {
                "name": r.name,
                "bitrate_kbps": r.bitrate_kbps,
                "playlist": f"{r.name}/index.m3u8",
                "segments": len(per_rendition[r.name]),
                "duration_s": round(sum(float(s.extinf) for s in per_rendition[r.name]), 3),
            }
        )
    (out / MASTER).write_text(master_playlist(per_rendition, renditions))
    if not variants[0]["segments"]:
        raise BusinessError("the audio decoded to no samples", code="corrupt_audio")
    return {
        "source_codec": info.codec,
        "source_duration_s": info.duration_s,
        "duration_s": variants[0]["duration_s"],
        "renditions": variants,
    }


class Progress:
    """A transcode's durable chunks: the manifests under `<output>.resume/<fingerprint>/`."""

    def __init__(self, storage: Storage, output: S3Location, fingerprint: str) -> None:
        self.storage, self.output = storage, output
        self.root = S3Location(output.bucket, output.key + RESUME)
        self.prefix = S3Location(output.bucket, f"{self.root.key}{fingerprint}/")

    def load(self) -> list[Chunk]:
        """The chunks committed so far, in order (up to the first gap)."""
        chunks: list[Chunk] = []
        for key in sorted(self.storage.keys(self.prefix)):
            chunk = Chunk.from_json(self.storage.read(S3Location(self.output.bucket, key)))
            if chunk.index != len(chunks):
                break
            chunks.append(chunk)
        return chunks

    def commit(self, chunk: Chunk, out: Path, progress: Callable[[], None]) -> None:
        """Upload the chunk's segments (then drop them locally), then its manifest."""
        for rendition, segments in chunk.segments.items():
            for s in segments:
                path = out / rendition / s.name
                self.storage.upload(path, self.at(f"{rendition}/{s.name}"), CONTENT_TYPES[".ts"])
                path.unlink()
                progress()
        where = S3Location(self.output.bucket, f"{self.prefix.key}chunk_{chunk.index:05d}.json")
        self.storage.put(where, chunk.to_json(), "application/json")

    def clear(self) -> None:
        """Delete every manifest (this fingerprint's and any older one's)."""
        self.storage.delete(self.root, self.storage.keys(self.root))

    def at(self, relative: str) -> S3Location:
        """An output: `relative` under the output prefix."""
        return S3Location(self.output.bucket, self.output.key + relative)


def fingerprint(
    source: S3Location, head: Mapping[str, Any], renditions: Sequence[Rendition], chunk_s: float
) -> str:
    """What must be equal for chunks of an earlier run to be reused (see the docstring)."""
    exe = Path(ffmpeg_exe())
    doc = {
        "layout": _LAYOUT,
        "source": [source.uri, source.version_id, head.get("ETag"), head.get("ContentLength")],
        "renditions": [asdict(r) for r in renditions],
        "segment_s": SEGMENT_S,
        "chunk_frames": chunk_frames(chunk_s, _pcm_format(renditions)[0]),
        "preroll_frames": PREROLL_FRAMES,
        "ffmpeg": [exe.name, exe.stat().st_size],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def run(data: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The `media/transcode` task: `{"source": {bucket, key[, version_id]}, "output": {bucket, prefix}}`."""
    source = location(data.get("source"), what="source", code="bad_task")
    output = location(data.get("output"), what="output", code="bad_task", field="prefix")
    output = S3Location(output.bucket, output.key.rstrip("/") + "/")
    storage = ctx.storage
    head = storage.head(source, missing="missing_audio")
    size = int(head.get("ContentLength") or 0)
    if size > ctx.limits.max_audio_bytes:
        raise BusinessError(
            f"{source.uri} is {size} bytes, more than {ctx.limits.max_audio_bytes}",
            code="oversize",
        )
    if size == 0:
        raise BusinessError(f"{source.uri} is empty", code="corrupt_audio")
    work = scratch_dir("transcode")  # swept by the next tasks process if this one dies
    try:
        src = work / ("source" + Path(source.key).suffix.lower()[:8])
        storage.download(source, src, missing="missing_audio")
        ctx.progress()
        out = work / "hls"
        progress = Progress(
            storage, output, fingerprint(source, head, RENDITIONS, ctx.transcode_chunk_s)
        )
        # One uploader thread stores chunk k while ffmpeg encodes chunk k + 1, in order; on the
        # way out (an error, the drain) it finishes what was handed to it before the scratch
        # directory goes.
        with ThreadPoolExecutor(1, thread_name_prefix="transcode-upload") as uploader:
            commits: list[Future[None]] = []
            broken = threading.Event()  # after a failed commit, none later (no gap to skip)

            def commit(chunk: Chunk) -> None:
                if broken.is_set():
                    return
                try:
                    progress.commit(chunk, out, ctx.progress)
                except BaseException:
                    broken.set()
                    raise

            def store(chunk: Chunk) -> None:
                for done in commits:
                    if done.done():
                        done.result()  # an upload that failed stops the encoding
                commits.append(uploader.submit(commit, chunk))

            try:
                result = transcode_file(
                    src,
                    out,
                    limits=ctx.limits,
                    chunk_s=ctx.transcode_chunk_s,
                    done=progress.load(),
                    on_chunk=store,
                    progress=ctx.progress,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise TransientError(
                    f"ffmpeg did not run: {exc}", code="ffmpeg_unavailable"
                ) from exc
            for pending in commits:
                pending.result()
        for r in RENDITIONS:
            playlist = f"{r.name}/index.m3u8"
            storage.upload(out / playlist, progress.at(playlist), CONTENT_TYPES[".m3u8"])
        storage.upload(out / MASTER, progress.at(MASTER), CONTENT_TYPES[".m3u8"])
        progress.clear()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = 1 + sum(1 + v["segments"] for v in result["renditions"])
    return {
        **result,
        "master": f"{output.uri}{MASTER}",
        "files": files,
        "source": {"bucket": source.bucket, "key": source.key, "size": size},
    }
