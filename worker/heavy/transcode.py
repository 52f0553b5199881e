"""Transcode: one audio object -> HLS audio renditions at several bitrates plus a master playlist.

ffmpeg comes from the imageio-ffmpeg wheel (a static binary inside the package), so the worker
needs no system package and no download at run time. The source is decoded once and encoded to
every rendition in the same ffmpeg process.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.s3 import S3Location, Storage, location
from sluice.catalog import TRANSCODE_TASK
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


def playlist_duration(text: str) -> float:
    """The sum of a media playlist's segment durations."""
    return sum(float(d) for d in _EXTINF.findall(text))


def _encode_args(src: Path, out: Path, renditions: Sequence[Rendition]) -> list[str]:
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error", "-i", str(src)]
    args += ["-progress", "pipe:1", "-nostats"]
    for r in renditions:
        (out / r.name).mkdir(parents=True, exist_ok=True)
        args += ["-map", "0:a:0", "-vn", "-sn", "-dn"]
        args += ["-c:a", "aac", "-b:a", f"{r.bitrate_kbps}k"]
        args += ["-ac", str(r.channels), "-ar", str(r.sample_rate)]
        args += ["-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_playlist_type", "vod"]
        args += ["-hls_segment_filename", str(out / r.name / "seg_%05d.ts")]
        args += [str(out / r.name / "index.m3u8")]
    return args


def encode(
    src: Path,
    out: Path,
    *,
    renditions: Sequence[Rendition] = RENDITIONS,
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Run ffmpeg once for all renditions; `progress` is called on every progress report."""
    args = _encode_args(src, out, renditions)
    with child(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for _line in proc.stdout:  # key=value lines, a block about twice a second
            progress()
        err = proc.stderr.read()
        returncode = proc.wait()
    _check_not_stopped(returncode, err)
    if returncode != 0:
        raise BusinessError(
            f"ffmpeg could not decode the audio: {err.strip()[-300:]}", code="corrupt_audio"
        )


def _check_not_stopped(returncode: int, stderr: str) -> None:
    """A signal that ended ffmpeg (the OOM killer, a stop, our drain) says nothing about the
    audio: transient, so the workflow retries, never corrupt_audio."""
    if returncode < 0:
        raise TransientError(f"ffmpeg killed by {signal_name(returncode)}", code="ffmpeg_killed")
    if returncode != 0 and _STOPPED in stderr:
        raise TransientError(f"ffmpeg stopped: {stderr.strip()[-200:]}", code="ffmpeg_killed")


def master_playlist(out: Path, renditions: Sequence[Rendition]) -> str:
    """The master playlist, with BANDWIDTH measured from the segments actually written."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in renditions:
        text = (out / r.name / "index.m3u8").read_text()
        durations = [float(d) for d in _EXTINF.findall(text)]
        sizes = [p.stat().st_size for p in sorted((out / r.name).glob("seg_*.ts"))]
        rates = [8 * s / d for s, d in zip(sizes, durations, strict=False) if d > 0]
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
    progress: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Local file -> HLS tree under `out` (master.m3u8 + one directory per rendition)."""
    limits = limits or Limits()
    info = probe(src)
    if info.duration_s is not None and info.duration_s > limits.max_audio_seconds:
        raise BusinessError(
            f"audio lasts {info.duration_s:.0f} s, more than {limits.max_audio_seconds} s",
            code="too_long",
        )
    encode(src, out, renditions=renditions, progress=progress)
    (out / MASTER).write_text(master_playlist(out, renditions))
    variants = []
    for r in renditions:
        text = (out / r.name / "index.m3u8").read_text()
        variants.append(
            {
                "name": r.name,
                "bitrate_kbps": r.bitrate_kbps,
                "playlist": f"{r.name}/index.m3u8",
                "segments": len(_EXTINF.findall(text)),
                "duration_s": round(playlist_duration(text), 3),
            }
        )
    if not variants[0]["segments"]:
        raise BusinessError("the audio decoded to no samples", code="corrupt_audio")
    return {
        "source_codec": info.codec,
        "source_duration_s": info.duration_s,
        "duration_s": variants[0]["duration_s"],
        "renditions": variants,
    }


def _upload_tree(
    storage: Storage, out: Path, output: S3Location, progress: Callable[[], None]
) -> int:
    count = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        where = S3Location(output.bucket, output.key + path.relative_to(out).as_posix())
        storage.upload(path, where, CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        count += 1
        progress()
    return count


def run(data: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The `media/transcode` task: `{"source": {bucket, key[, version_id]}, "output": {bucket, prefix}}`."""
    source = location(data.get("source"), what="source", code="bad_task")
    output = location(data.get("output"), what="output", code="bad_task", field="prefix")
    output = S3Location(output.bucket, output.key.rstrip("/") + "/")
    storage = ctx.storage
    size = int(storage.head(source, missing="missing_audio").get("ContentLength") or 0)
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
        try:
            result = transcode_file(src, out, limits=ctx.limits, progress=ctx.progress)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TransientError(f"ffmpeg did not run: {exc}", code="ffmpeg_unavailable") from exc
        files = _upload_tree(storage, out, output, ctx.progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **result,
        "master": f"{output.uri}{MASTER}",
        "files": files,
        "source": {"bucket": source.bucket, "key": source.key, "size": size},
    }
