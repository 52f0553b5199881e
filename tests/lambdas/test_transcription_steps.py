"""start_transcription starts one job per workflow; check_transcription reports its state."""

from __future__ import annotations

import pytest

from lambdas.steps.check_transcription.handler import handler as check
from lambdas.steps.start_transcription.handler import handler as start
from lambdas.steps.start_transcription.handler import job_name, output_key
from sluice.errors import BusinessError
from tests.lambdas.audio import wav


def _start_payload(aws) -> dict:
    return {
        "job_id": "job-7",
        "correlation_id": "corr-7",
        "bucket": aws.bucket,
        "key": "uploads/a.wav",
        "format": "wav",
        "sample_rate": 16_000,
    }


def test_starting_a_transcription_names_the_job_after_the_workflow(aws, lambda_context):
    aws.put_audio("uploads/a.wav", wav(1.0))
    result = start(_start_payload(aws), lambda_context)
    assert result == {"transcription_job": "sluice-job-7", "status": "QUEUED", "started": True}
    job = aws.transcribe.get_transcription_job(TranscriptionJobName="sluice-job-7")[
        "TranscriptionJob"
    ]
    assert job["Media"]["MediaFileUri"] == f"s3://{aws.bucket}/uploads/a.wav"
    assert (job["MediaFormat"], job["LanguageCode"]) == ("wav", "en-US")


def test_a_retried_start_reuses_the_job_it_started_before(aws, lambda_context):
    # Given the step already started the job once
    aws.put_audio("uploads/a.wav", wav(1.0))
    start(_start_payload(aws), lambda_context)
    # When it runs again for the same workflow (a retry or a replay)
    again = start(_start_payload(aws), lambda_context)
    # Then no second job exists
    assert again["started"] is False
    jobs = aws.transcribe.list_transcription_jobs()["TranscriptionJobSummaries"]
    assert [j["TranscriptionJobName"] for j in jobs] == ["sluice-job-7"]


def test_a_running_job_is_not_done(aws, lambda_context):
    aws.put_audio("uploads/a.wav", wav(1.0))
    start(_start_payload(aws), lambda_context)
    result = check({"transcription_job": job_name("job-7")}, lambda_context)
    assert result["done"] is False


def test_a_completed_job_points_at_its_transcript_in_the_media_bucket(aws, lambda_context):
    aws.put_audio("uploads/a.wav", wav(1.0))
    start(_start_payload(aws), lambda_context)
    result = {"done": False}
    for _ in range(5):  # moto moves QUEUED -> IN_PROGRESS -> COMPLETED, one step per read
        result = check({"transcription_job": job_name("job-7")}, lambda_context)
        if result["done"]:
            break
    assert result["status"] == "COMPLETED"
    assert (result["transcript_bucket"], result["transcript_key"]) == (
        aws.bucket,
        output_key("job-7"),
    )


def test_a_failed_transcribe_job_is_a_business_error_with_its_reason(aws, lambda_context):
    # Given Transcribe reports the job FAILED
    class FailedTranscribe:
        def get_transcription_job(self, TranscriptionJobName):
            return {
                "TranscriptionJob": {
                    "TranscriptionJobName": TranscriptionJobName,
                    "TranscriptionJobStatus": "FAILED",
                    "FailureReason": "The media format doesn't match the file.",
                }
            }

    from lambdas.common.runtime import clients

    clients.override(transcribe=FailedTranscribe())
    # When the status is checked
    with pytest.raises(BusinessError) as err:
        check({"transcription_job": "sluice-job-7"}, lambda_context)
    # Then the failure is final and carries Transcribe's reason
    assert err.value.code == "transcription_failed"
    assert "doesn't match" in str(err.value)


def test_an_unknown_job_is_a_business_error(aws, lambda_context):
    with pytest.raises(BusinessError) as err:
        check({"transcription_job": "sluice-nope"}, lambda_context)
    assert err.value.code == "no_such_job"
