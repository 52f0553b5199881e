"""Embed: time-aligned chunks, real sentence vectors in the media bucket, and search over them."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from sluice.errors import BusinessError
from tests.heavy import sermon
from tests.heavy.conftest import Aws
from worker.heavy import embed


def _put_transcript(aws: Aws, key: str = "transcripts/job-1/transcript.json") -> str:
    aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=json.dumps(sermon.document()).encode())
    return f"s3://{aws.bucket}/{key}"


def test_chunks_follow_segment_boundaries_and_keep_their_times() -> None:
    # Given the sermon's 12 timed segments
    segs = sermon.segments()
    # When chunked at ~40 words with one segment of overlap
    chunks = embed.chunk(segs, max_words=40, overlap=1)
    # Then every chunk starts and ends on a segment's times, covers the whole talk, and
    # each chunk after the first repeats the previous chunk's last segment
    starts = {s["start"] for s in segs}
    ends = {s["end"] for s in segs}
    assert all(c.start in starts and c.end in ends for c in chunks)
    assert chunks[0].start == 0.0 and chunks[-1].end == segs[-1]["end"]
    assert all(len(c.text.split()) <= 40 for c in chunks)
    for prev, nxt in itertools.pairwise(chunks):
        last_of_prev = prev.text.split(". ")[-1].rstrip(".")
        assert nxt.text.startswith(last_of_prev[:20])


def test_transcribe_json_is_read_word_by_word_with_punctuation_attached() -> None:
    # Given Amazon Transcribe's raw output
    doc = {
        "results": {
            "items": [
                {
                    "type": "pronunciation",
                    "start_time": "0.5",
                    "end_time": "0.9",
                    "alternatives": [{"content": "Hello"}],
                },
                {"type": "punctuation", "alternatives": [{"content": "."}]},
                {
                    "type": "pronunciation",
                    "start_time": "1.2",
                    "end_time": "1.6",
                    "alternatives": [{"content": "Amen"}],
                },
            ]
        }
    }
    # When its segments are read, Then words keep their times and punctuation joins the word
    assert embed.segments_of(doc) == [
        {"start": 0.5, "end": 0.9, "text": "Hello."},
        {"start": 1.2, "end": 1.6, "text": "Amen"},
    ]


def test_vectors_are_unit_length_and_similar_sentences_score_higher(model) -> None:
    # Given three sentences, two about the same thing
    texts = [
        "The picnic is on Saturday.",
        "We meet in the park this weekend.",
        "Taxes rose sharply.",
    ]
    # When embedded
    v = model.embed(texts)
    # Then each vector has 384 unit-length dimensions and the related pair is closest
    assert v.shape == (3, embed.DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1


def _embed_eight_in_order(model: embed.Embedder, texts: list[str]) -> np.ndarray:
    """The reference: the step's first loop, kept here as the oracle for its faster ones. Eight
    texts at a time in their order, padded by the tokenizer itself to the batch's longest, mean
    pooled over the attention mask, L2-normalised."""
    tokenizer = embed.tokenizer()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    rows = []
    for start in range(0, len(texts), 8):
        batch = tokenizer.encode_batch(texts[start : start + 8])
        mask = np.array([e.attention_mask for e in batch], dtype=np.int64)
        (hidden,) = model.session.run(
            ["last_hidden_state"],
            {
                "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
                "attention_mask": mask,
                "token_type_ids": np.array([e.type_ids for e in batch], dtype=np.int64),
            },
        )
        pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        rows.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(rows).astype(np.float32)


def test_vectors_equal_the_plain_eight_at_a_time_loop_in_chunk_order(model) -> None:
    # Given a transcript whose chunks run from a few words to past the model's 256 tokens,
    # long and short interleaved (so any batching that pads, sorts or splits shows)
    sentences = [t for _, topic in sermon.TOPICS for t in topic]
    lengths = [2, 150, 9, 40, 1, 230, 17, 3, 90, 5, 60, 12, 300, 4, 33, 7, 120, 2, 25, 70, 6]
    segs = []
    for i, n in enumerate(lengths):
        words = " ".join(sentences[(i + j) % len(sentences)] for j in range(n)).split()[:n]
        segs.append({"start": 4.0 * i, "end": 4.0 * i + 3.5, "text": " ".join(words)})
    texts = [c.text for c in embed.chunk(segs, max_words=30, overlap=0)]
    tokens = [len(e.ids) for e in embed.tokenizer().encode_batch(texts)]
    assert len(texts) % 8 and max(tokens) == embed.MAX_TOKENS and min(tokens) < 12
    # When the step embeds them
    got = model.embed(texts)
    # Then each row equals the plain loop's row for the same chunk, in the chunks' order
    want = _embed_eight_in_order(model, texts)
    assert got.shape == want.shape == (len(texts), embed.DIM)
    assert np.allclose(got, want, rtol=0, atol=1e-6)
    assert len({tuple(np.round(row, 4)) for row in got}) == len(texts)


def test_the_task_writes_vectors_chunk_text_and_timestamps_to_the_bucket(aws: Aws) -> None:
    # Given a transcript in the media bucket
    uri = _put_transcript(aws)
    # When the embed task runs
    result = embed.run(
        {
            "transcript": uri,
            "output": {"bucket": aws.bucket, "prefix": "embeddings/job-1"},
            "chunk_words": 40,
        },
        aws.context(),
    )
    # Then vectors.npy and chunks.json are under the prefix, one vector per chunk with times
    assert aws.keys("embeddings/job-1/") == [
        "embeddings/job-1/chunks.json",
        "embeddings/job-1/vectors.npy",
    ]
    index = embed.load_index(aws.s3, aws.bucket, "embeddings/job-1/")
    assert index.vectors.shape == (result["chunks"], embed.DIM)
    assert result["model"] == index.model == embed.MODEL_ID
    assert all(c.end > c.start for c in index.chunks)
    assert result["duration_s"] == sermon.segments()[-1]["end"]


@pytest.mark.parametrize(
    ("query", "topic", "words"),
    [
        ("When and where is the church picnic?", "picnic", "Riverside Park"),
        (
            "How many times should I forgive someone who wrongs me?",
            "forgiveness",
            "seventy times seven",
        ),
        ("Was the money for the new roof raised?", "giving", "roof is paid"),
    ],
)
def test_search_ranks_the_chunk_that_answers_first(aws: Aws, model, query, topic, words) -> None:
    # Given the sermon embedded into the bucket
    embed.run(
        {
            "transcript": _put_transcript(aws),
            "output": {"bucket": aws.bucket, "prefix": "embeddings/job-1/"},
            "chunk_words": 40,
        },
        aws.context(),
    )
    # When searching it
    hits = embed.search(
        query, 3, s3=aws.s3, bucket=aws.bucket, prefix="embeddings/job-1/", model=model
    )
    # Then the first hit holds the answer, and its timestamps point into that part of the talk
    assert words in hits[0]["text"]
    start, end = sermon.topic_span(topic)
    assert hits[0]["start"] < end and hits[0]["end"] > start
    assert hits[0]["score"] > hits[1]["score"]


def test_a_missing_transcript_is_a_business_error(aws: Aws) -> None:
    # Given no transcript at the URI, When embedding, Then reason missing_transcript
    with pytest.raises(BusinessError) as err:
        embed.run(
            {
                "transcript": f"s3://{aws.bucket}/transcripts/none.json",
                "output": {"bucket": aws.bucket, "prefix": "embeddings/x/"},
            },
            aws.context(),
        )
    assert err.value.code == "missing_transcript"


def test_a_transcript_that_is_not_json_is_a_business_error(aws: Aws) -> None:
    aws.s3.put_object(Bucket=aws.bucket, Key="transcripts/bad.json", Body=b"\xff\xfenot json")
    with pytest.raises(BusinessError) as err:
        embed.run(
            {
                "transcript": {"bucket": aws.bucket, "key": "transcripts/bad.json"},
                "output": {"bucket": aws.bucket, "prefix": "embeddings/x/"},
            },
            aws.context(),
        )
    assert err.value.code == "bad_transcript"


def test_an_oversize_transcript_is_refused_before_reading(aws: Aws) -> None:
    # Given a transcript larger than the worker's limit
    uri = _put_transcript(aws)
    # When embedding with a 100-byte limit, Then reason oversize and nothing written
    with pytest.raises(BusinessError) as err:
        embed.run(
            {"transcript": uri, "output": {"bucket": aws.bucket, "prefix": "embeddings/x/"}},
            aws.context(max_transcript_bytes=100),
        )
    assert err.value.code == "oversize"
    assert aws.keys("embeddings/x/") == []


def test_a_transcript_without_words_is_a_business_error(aws: Aws) -> None:
    aws.s3.put_object(Bucket=aws.bucket, Key="transcripts/empty.json", Body=b'{"segments": []}')
    with pytest.raises(BusinessError) as err:
        embed.run(
            {
                "transcript": f"s3://{aws.bucket}/transcripts/empty.json",
                "output": {"bucket": aws.bucket, "prefix": "embeddings/x/"},
            },
            aws.context(),
        )
    assert err.value.code == "empty_transcript"
