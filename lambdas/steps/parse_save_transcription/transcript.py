"""Transcribe's words (adapters.transcribe) -> caption segments, paragraphs, plain text, WebVTT."""

from __future__ import annotations

from typing import Any

from adapters.transcribe import Word

SENTENCE_END = (".", "?", "!")
# Captions stay readable: at most this long on screen, and this many characters.
MAX_SEGMENT_S = 6.0
MAX_SEGMENT_CHARS = 84
# A pause this long (or a paragraph this long) starts a new paragraph.
PARAGRAPH_PAUSE_S = 1.5
MAX_PARAGRAPH_S = 60.0


def _segment_dict(ws: list[Word]) -> dict[str, Any]:
    return {"start": ws[0].start, "end": ws[-1].end, "text": " ".join(w.text for w in ws)}


def segments(ws: list[Word]) -> list[dict[str, Any]]:
    """Caption-sized runs of words, cut at sentence ends, length and duration limits."""
    out: list[dict[str, Any]] = []
    current: list[Word] = []
    for word in ws:
        if current:
            too_long = word.end - current[0].start > MAX_SEGMENT_S
            too_wide = sum(len(w.text) + 1 for w in current) + len(word.text) > MAX_SEGMENT_CHARS
            if too_long or too_wide:
                out.append(_segment_dict(current))
                current = []
        current.append(word)
        if word.text.endswith(SENTENCE_END):
            out.append(_segment_dict(current))
            current = []
    if current:
        out.append(_segment_dict(current))
    return out


def paragraphs(segs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments grouped into paragraphs at long pauses (or every minute or so)."""
    out: list[dict[str, Any]] = []
    for seg in segs:
        last = out[-1] if out else None
        if (
            last is None
            or seg["start"] - last["end"] >= PARAGRAPH_PAUSE_S
            or seg["end"] - last["start"] > MAX_PARAGRAPH_S
        ):
            out.append(
                {"start": seg["start"], "end": seg["end"], "text": seg["text"], "segments": [seg]}
            )
        else:
            last["end"] = seg["end"]
            last["text"] += " " + seg["text"]
            last["segments"].append(seg)
    return out


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def webvtt(segs: list[dict[str, Any]]) -> str:
    cues = [
        f"{i}\n{_timestamp(s['start'])} --> {_timestamp(s['end'])}\n{s['text']}"
        for i, s in enumerate(segs, start=1)
    ]
    return "WEBVTT\n\n" + "\n\n".join(cues) + "\n"


def plain_text(paras: list[dict[str, Any]]) -> str:
    return "\n\n".join(p["text"] for p in paras) + "\n"
