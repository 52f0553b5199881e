"""A small sermon transcript, in the shape parse_save_transcription writes (timed segments)."""

from __future__ import annotations

from typing import Any

# (topic, sentences): each sentence becomes one caption-sized segment of 4 seconds.
TOPICS: list[tuple[str, list[str]]] = [
    (
        "welcome",
        [
            "Good morning and welcome to everyone joining us today.",
            "If you are visiting for the first time, we are glad you came.",
            "Please silence your phones and find a seat near the front.",
        ],
    ),
    (
        "picnic",
        [
            "A quick announcement about the church picnic.",
            "The picnic will be held next Saturday at noon in Riverside Park.",
            "Bring a dish to share, and the youth group will run games for the children.",
        ],
    ),
    (
        "forgiveness",
        [
            "Our passage today is about forgiveness.",
            "Peter asked how many times he must forgive his brother, seven times?",
            "Jesus answered seventy times seven: forgiveness has no ledger and keeps no count.",
        ],
    ),
    (
        "giving",
        [
            "Finally, thank you for your generosity this year.",
            "The building fund reached its goal and the new roof is paid for.",
            "Offering envelopes are in the pews, or you can give online.",
        ],
    ),
]
SEGMENT_S = 4.0


def segments() -> list[dict[str, Any]]:
    out, t = [], 0.0
    for _, sentences in TOPICS:
        for text in sentences:
            out.append({"start": t, "end": t + SEGMENT_S - 0.5, "text": text})
            t += SEGMENT_S
        t += 2.0  # a pause between topics
    return out


def topic_span(topic: str) -> tuple[float, float]:
    """Start and end (s) of a topic's segments."""
    t, spans = 0.0, {}
    for name, sentences in TOPICS:
        spans[name] = (t, t + SEGMENT_S * len(sentences) - 0.5)
        t += SEGMENT_S * len(sentences) + 2.0
    return spans[topic]


def document(job_id: str = "job-1") -> dict[str, Any]:
    segs = segments()
    return {"job_id": job_id, "duration_s": segs[-1]["end"], "segments": segs, "paragraphs": []}
