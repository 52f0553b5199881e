"""notify_user tells the user and the platform; on_failure records why a job failed."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from lambdas.common.aws import jobs as jobs_table
from lambdas.common.runtime import clients
from lambdas.steps.notify_user.handler import handler as notify
from lambdas.steps.on_failure.handler import handler as on_failure
from sluice.envelope import Event, event_from_dict
from sluice.errors import BusinessError, TransientError
from sluice.workflows import failure_report

OUTPUTS = {"transcript": "s3://b/transcripts/job-3/transcript.json"}


def _payload() -> dict:
    return {
        "job_id": "job-3",
        "correlation_id": "corr-3",
        "source": {"bucket": "b", "key": "uploads/a.wav"},
        "outputs": OUTPUTS,
    }


def test_completion_is_published_and_sent_as_an_event(aws, lambda_context):
    result = notify(_payload(), lambda_context)
    # The user's notification
    (note,) = aws.notifications()
    assert (note["type"], note["job_id"], note["outputs"]) == (
        "transcription.completed",
        "job-3",
        OUTPUTS,
    )
    # The platform's event, a valid envelope with the job's correlation id
    (doc,) = aws.events()
    event = event_from_dict(doc)
    assert (event.name, event.id, event.correlation_id) == (
        "media/transcription.completed",
        result["event_id"],
        "corr-3",
    )
    assert event.data["outputs"] == OUTPUTS


def test_a_retried_notification_sends_the_same_event_id(aws, lambda_context):
    first = notify(_payload(), lambda_context)
    second = notify(_payload(), lambda_context)
    assert first["event_id"] == second["event_id"]


def test_throttling_is_reported_as_a_transient_error(aws, lambda_context):
    class ThrottledSns:
        def publish(self, **_):
            raise ClientError(
                {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish"
            )

    clients.override(sns=ThrottledSns())
    with pytest.raises(TransientError):
        notify(_payload(), lambda_context)


def test_a_failure_is_recorded_on_the_job_and_notified(aws, lambda_context):
    # Given a running job
    jobs_table().claim("job-3", execution_arn="arn:x", fields={"event_id": "e-3"})
    # When on_failure runs for a business error of fetch_audio_metadata (the report the
    # workflow wrapper sends: sluice.workflows.failure_report)
    on_failure(
        failure_report(
            workflow="transcribe_audio",
            job_id="job-3",
            event=Event(name="media/uploaded", id="e-3", correlation_id="corr-3", data={}),
            reason={
                "reason": "step_failed",
                "step": "fetch_audio_metadata",
                "error_class": "business",
                "error_type": "BusinessError",
                "message": "s3://b/uploads/a.wav is not audio",
            },
        ),
        lambda_context,
    )
    # Then the record says why, and the user is told
    record = aws.job("job-3")
    assert record["status"] == "FAILED"
    assert record["failed_step"] == "fetch_audio_metadata"
    assert record["error"]["error_class"] == "business"
    assert "not audio" in record["error"]["message"]
    (note,) = aws.notifications()
    assert note["type"] == "transcription.failed"


def test_a_claimed_job_cannot_be_claimed_by_another_execution(aws):
    assert jobs_table().claim("job-4", execution_arn="arn:a", fields={}) == {"claimed": True}
    assert jobs_table().claim("job-4", execution_arn="arn:a", fields={}) == {"claimed": True}
    other = jobs_table().claim("job-4", execution_arn="arn:b", fields={})
    assert other == {"claimed": False, "owner": "arn:a", "status": "RUNNING"}


def test_a_report_without_what_the_contract_needs_fails_naming_the_field(aws, lambda_context):
    # The failure handler's input is a contract (sluice/steps.py FailureReport): a report that
    # names no step fails at once as a business error, before the job record is touched
    with pytest.raises(BusinessError, match="on_failure input: step: Field required") as err:
        on_failure(
            {
                "job_id": "job-5",
                "workflow": "w",
                "event_id": "e",
                "event_name": "a/b",
                "reason": "error",
                "error_class": "business",
            },
            lambda_context,
        )
    assert err.value.code == "bad_input"
    assert aws.job("job-5") is None
