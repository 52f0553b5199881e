"""Real audio bytes made in tests: WAV via the stdlib, MP3 as valid MPEG-1 Layer III frames."""

from __future__ import annotations

import io
import math
import struct
import wave


def wav(seconds: float, *, rate: int = 16_000, channels: int = 1) -> bytes:
    """A sine tone of `seconds` as 16-bit PCM WAV."""
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        # One second of a 440 Hz tone, repeated: long recordings stay cheap to make.
        second = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) * channels
            for i in range(rate)
        )
        whole, rest = divmod(frames, rate)
        w.writeframes(second * whole + second[: rest * 2 * channels])
    return buf.getvalue()


def mp3(seconds: float) -> bytes:
    """Silent MPEG-1 Layer III frames, 128 kbit/s, 44.1 kHz, joint stereo (417 bytes each)."""
    header = bytes([0xFF, 0xFB, 0x90, 0x44])
    frame = header + bytes(417 - len(header))
    count = max(1, round(seconds * 44_100 / 1152))
    return frame * count
