"""The sermon of a local run: the audio it uploads, and the transcript Transcribe would write.

moto's Transcribe accepts the job but runs no recognition and writes no transcript; the real
`start_transcription` step is wrapped so that it writes a canned one (Transcribe's JSON format)
spread over the audio's length. The transcript's words are not the audio's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.durable_lambda import ACCOUNT
from sluice.settings import LambdaSettings

AUDIO_SECONDS = 24
# What "Transcribe" hears in local mode: the words are canned, their times span the audio.
SCRIPT = (
    "Grace and peace to you from God our Father. Today we read from Psalm twenty three. "
    "The Lord is my shepherd, I shall not want. He makes me lie down in green pastures. "
    "He leads me beside still waters. He restores my soul. Let us pray together."
)


def make_audio(path: Path, seconds: int) -> Path:
    """A short MP3 (two tones), made with the same ffmpeg the worker transcodes with."""
    from worker.heavy.transcode import ffmpeg_exe

    tones = f"sine=frequency=220:duration={seconds}", f"sine=frequency=330:duration={seconds}"
    subprocess.run(
        [
            ffmpeg_exe(),
            *("-hide_banner", "-nostdin", "-v", "error", "-y"),
            *("-f", "lavfi", "-i", tones[0], "-f", "lavfi", "-i", tones[1]),
            *("-filter_complex", "amix=inputs=2", "-ac", "2", "-ar", "44100"),
            *("-c:a", "libmp3lame", "-b:a", "128k", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


def transcribe_json(duration_s: float, job: str) -> dict[str, Any]:
    """Amazon Transcribe's output format for SCRIPT spread over `duration_s` seconds."""
    tokens: list[str] = []
    for word in SCRIPT.split():
        core = word.rstrip(".,")
        tokens.append(core)
        if word != core:
            tokens.append(word[len(core) :][0])
    spoken = [t for t in tokens if t not in {".", ","}]
    step = max(duration_s - 0.5, 1.0) / len(spoken)
    items, t = [], 0.2
    for token in tokens:
        if token in {".", ","}:
            items.append(
                {"type": "punctuation", "alternatives": [{"confidence": "0.0", "content": token}]}
            )
            continue
        items.append(
            {
                "type": "pronunciation",
                "start_time": f"{t:.3f}",
                "end_time": f"{t + step * 0.8:.3f}",
                "alternatives": [{"confidence": "0.99", "content": token}],
            }
        )
        t += step
    return {
        "jobName": job,
        "accountId": ACCOUNT,
        "status": "COMPLETED",
        "results": {"transcripts": [{"transcript": SCRIPT}], "items": items},
    }


def with_emulated_transcript(start: Callable[..., Any], duration_s: float) -> Callable[..., Any]:
    """The real start_transcription step, then the transcript moto's Transcribe never writes."""
    from lambdas.common.runtime import clients
    from lambdas.steps.start_transcription.handler import output_key

    def target(event: Any, context: Any) -> Any:
        result = start(event, context)
        clients("s3").put_object(
            Bucket=LambdaSettings.read().media_bucket,
            Key=output_key(event["job_id"]),
            Body=json.dumps(transcribe_json(duration_s, result["transcription_job"])).encode(),
            ContentType="application/json",
        )
        return result

    return target
