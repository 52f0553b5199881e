"""Fan-in join records against moto: outcomes, duplicates, the one emitter."""

from __future__ import annotations

import pytest

from adapters.joins import FAILED, SUCCEEDED, Joins

BRANCHES = ("embed_transcript", "transcode_audio")


@pytest.fixture
def joins(aws) -> Joins:
    return Joins(aws.ddb, aws.coordination)


def test_the_join_completes_when_every_branch_ended_in_either_order(joins):
    first = joins.record("m1", "transcode_audio", SUCCEEDED, expected=BRANCHES, now=0)
    assert (first.complete, first.outcome) == (False, "running")
    second = joins.record("m1", "embed_transcript", SUCCEEDED, expected=BRANCHES, now=0)
    assert (second.complete, second.outcome, second.event_id) == (True, "ready", "ready-m1")


def test_a_failed_branch_makes_the_outcome_failed_and_is_named(joins):
    joins.record("m1", "embed_transcript", FAILED, expected=BRANCHES, now=0)
    state = joins.record("m1", "transcode_audio", SUCCEEDED, expected=BRANCHES, now=0)
    assert (state.outcome, state.failed, state.event_id) == (
        "failed",
        ["embed_transcript"],
        "failed-m1",
    )


def test_the_first_outcome_of_a_branch_stays(joins):
    joins.record("m1", "embed_transcript", FAILED, expected=BRANCHES, now=0)
    again = joins.record("m1", "embed_transcript", SUCCEEDED, expected=BRANCHES, now=0)
    assert again.branches == {"embed_transcript": FAILED}


def test_only_one_branch_wins_the_emit_and_keeps_it_on_retry_until_marked(joins):
    joins.record("m1", "embed_transcript", SUCCEEDED, expected=BRANCHES, now=0)
    joins.record("m1", "transcode_audio", SUCCEEDED, expected=BRANCHES, now=0)
    assert joins.claim_emit("m1", "transcode_audio")
    assert not joins.claim_emit("m1", "embed_transcript")
    assert joins.claim_emit("m1", "transcode_audio")  # its retry after a crash
    joins.mark_emitted("m1", "ready-m1")
    assert not joins.claim_emit("m1", "transcode_audio")
    assert joins.get("m1").emitted == "ready-m1"
