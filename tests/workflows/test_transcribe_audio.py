"""transcribe_audio, run for real: steps invoked durably, retries, the failure path, replay."""

from __future__ import annotations

from aws_durable_execution_sdk_python.execution import InvocationStatus

from sluice.errors import BusinessError, TransientError
from tests.lambdas.audio import wav
from tests.workflows.conftest import result_payload


def _names(result) -> list[str]:
    return [op.name for op in result.get_all_operations() if op.name]


def test_an_upload_becomes_transcript_captions_job_record_and_notification(harness):
    # Given a sermon in the media bucket and the transcript Transcribe will write
    harness.aws.put_audio("uploads/sermon.wav", wav(8.0))
    event = harness.event()
    harness.transcript_ready(event)
    # When the workflow runs to the end
    result = harness.run(event)
    # Then it succeeded with the outputs
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    out = result_payload(result)
    assert out["status"] == "COMPLETED"
    assert out["word_count"] == 12
    assert out["duration_s"] == 8.0
    # And transcript, text and captions are in the bucket
    keys = {
        o["Key"]
        for o in harness.aws.s3.list_objects_v2(Bucket=harness.aws.bucket, Prefix="transcripts/")[
            "Contents"
        ]
    }
    assert keys == {
        f"transcripts/{event.execution_name}/{name}"
        for name in ("transcript.json", "transcript.txt", "captions.vtt")
    }
    # And the job record is complete, the user told, the completion event sent
    assert harness.aws.job(event.execution_name)["status"] == "COMPLETED"
    assert [n["type"] for n in harness.aws.notifications()] == ["transcription.completed"]
    (completed,) = harness.aws.events()
    assert completed["name"] == "media/transcription.completed"
    assert completed["correlation_id"] == event.correlation_id
    # And the workflow waited durably for Transcribe between polls
    assert "wait_transcription#1" in _names(result)
    assert harness.calls["on_failure"] == 0


def test_a_transient_failure_is_retried_and_the_workflow_succeeds(harness):
    # Given fetch_audio_metadata is throttled twice
    harness.aws.put_audio("uploads/sermon.wav", wav(2.0))
    event = harness.event()
    harness.transcript_ready(event)
    harness.faults["fetch_audio_metadata"] = [
        TransientError("S3: SlowDown"),
        TransientError("S3: SlowDown"),
    ]
    # When the workflow runs
    result = harness.run(event)
    # Then the third attempt succeeded after two durable backoff waits
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    assert harness.calls["fetch_audio_metadata"] == 3
    names = _names(result)
    assert {"fetch_audio_metadata#1 backoff", "fetch_audio_metadata#2 backoff"} <= set(names)
    assert "fetch_audio_metadata#3" in names
    assert harness.calls["on_failure"] == 0


def test_a_business_failure_runs_on_failure_and_fails_with_the_error_recorded(harness):
    # Given an upload that is not audio
    harness.aws.put_audio("uploads/sermon.wav", b"PK\x03\x04 a zip file, not a sermon" * 50)
    event = harness.event()
    # When the workflow runs
    result = harness.run(event)
    # Then the step was not retried, on_failure ran, and the execution failed
    assert result.status is InvocationStatus.FAILED
    assert harness.calls["fetch_audio_metadata"] == 1
    assert harness.calls["on_failure"] == 1
    assert harness.calls["start_transcription"] == 0
    assert "fetch_audio_metadata" in result.error.message
    # And the job record says which step failed, how and why
    record = harness.aws.job(event.execution_name)
    assert record["status"] == "FAILED"
    assert record["failed_step"] == "fetch_audio_metadata"
    assert record["error"]["error_class"] == "business"
    assert "not audio" in record["error"]["message"]
    assert [n["type"] for n in harness.aws.notifications()] == ["transcription.failed"]


def test_transient_failures_beyond_the_budget_run_on_failure(harness):
    harness.aws.put_audio("uploads/sermon.wav", wav(2.0))
    event = harness.event()
    harness.faults["fetch_audio_metadata"] = [TransientError("S3: SlowDown")] * 4
    result = harness.run(event)
    assert result.status is InvocationStatus.FAILED
    assert harness.calls["fetch_audio_metadata"] == 4
    record = harness.aws.job(event.execution_name)
    assert (record["status"], record["error"]["error_class"]) == ("FAILED", "transient")


def test_a_transcript_without_words_fails_the_job_at_parse_save(harness):
    harness.aws.put_audio("uploads/sermon.wav", wav(2.0))
    event = harness.event()
    harness.transcript_ready(event, words=[])
    result = harness.run(event)
    assert result.status is InvocationStatus.FAILED
    assert harness.aws.job(event.execution_name)["failed_step"] == "parse_save_transcription"


def test_replays_do_not_run_completed_steps_again(harness):
    # Given a run whose durable waits suspend and replay the workflow several times
    harness.aws.put_audio("uploads/sermon.wav", wav(2.0))
    event = harness.event()
    harness.transcript_ready(event)
    result = harness.run(event)
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    assert harness.calls["workflow invocations"] > 2
    # Then every completed step ran exactly once, whatever the number of replays
    for step in ("fetch_audio_metadata", "start_transcription", "parse_save_transcription"):
        assert harness.calls[step] == 1, step
    assert harness.calls["notify_user"] == 1
    jobs = harness.aws.transcribe.list_transcription_jobs()["TranscriptionJobSummaries"]
    assert len(jobs) == 1


def test_a_second_start_with_the_same_event_id_starts_nothing_new(harness):
    # Given the pipeline already ran for an event
    harness.aws.put_audio("uploads/sermon.wav", wav(2.0))
    event = harness.event()
    harness.transcript_ready(event)
    assert harness.run(event).status is InvocationStatus.SUCCEEDED
    harness.aws.notifications()
    harness.aws.events()
    calls_before = dict(harness.calls)
    # When another execution starts for the same event id
    second = harness.run(event)
    # Then it ends at once as a duplicate: no step runs, nothing is sent again
    assert second.status is InvocationStatus.SUCCEEDED
    assert result_payload(second)["status"] == "DUPLICATE"
    steps = [s for s in calls_before if s != "workflow invocations"]
    assert {s: harness.calls[s] for s in steps} == {s: calls_before[s] for s in steps}
    assert harness.aws.notifications() == []
    assert harness.aws.job(event.execution_name)["status"] == "COMPLETED"


def test_an_event_without_bucket_and_key_fails_before_any_step_but_the_failure_handler(harness):
    event = harness.event()
    bad = type(event)(name=event.name, id="01JD3BAD", data={"note": "no object"})
    result = harness.run(bad)
    assert result.status is InvocationStatus.FAILED
    assert BusinessError.__name__ in (result.error.type or "")
    steps = {k: v for k, v in harness.calls.items() if k != "workflow invocations"}
    assert steps == {"on_failure": 1}


def test_an_s3_upload_notification_starts_the_same_pipeline_for_that_object_version(harness):
    # Given a versioned media bucket and the notification S3 sends for an upload
    from sluice.envelope import events_from_s3_notification

    aws = harness.aws
    aws.s3.put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    put = aws.s3.put_object(Bucket=aws.bucket, Key="uploads/sermon.wav", Body=wav(2.0))
    (event,) = events_from_s3_notification(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "eventTime": "2026-11-23T10:00:00.000Z",
                    "s3": {
                        "bucket": {"name": aws.bucket},
                        "object": {"key": "uploads/sermon.wav", "versionId": put["VersionId"]},
                    },
                }
            ]
        }
    )
    harness.transcript_ready(event)
    # When the workflow runs for the media/uploaded event
    result = harness.run(event)
    # Then the upload alone produced the transcript
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    record = aws.job(event.execution_name)
    assert record["status"] == "COMPLETED"
    assert record["source"]["version_id"] == put["VersionId"]
