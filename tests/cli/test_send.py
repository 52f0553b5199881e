"""`sluice send`: a valid event lands on the events queue; bad input is refused, naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.envelope import parse_events
from tests.cli.conftest import Sqs

DATA = '{"bucket": "media", "key": "uploads/sermon.mp3"}'


def test_send_puts_a_valid_envelope_on_the_events_queue(sqs: Sqs, run) -> None:
    # Given Sluice-test's queues
    # When an operator sends a transcription request with an id
    result = run("send", "media/transcription.requested", "--data", DATA, "--id", "job-1")
    # Then the events queue holds exactly that envelope, and the output says how to follow it
    assert result.exit_code == 0, result.output
    messages = sqs.drain("events")
    assert len(messages) == 1
    (event,) = parse_events(messages[0]["Body"].encode())
    assert (event.id, event.name, dict(event.data)) == (
        "job-1",
        "media/transcription.requested",
        json.loads(DATA),
    )
    assert messages[0]["MessageAttributes"]["correlation_id"]["StringValue"] == "job-1"
    assert "sluice --env test jobs show job-1" in result.output


def test_send_without_an_id_makes_a_new_one(sqs: Sqs, run) -> None:
    result = run("send", "media/transcription.requested", "--data", DATA)
    assert result.exit_code == 0, result.output
    (event,) = parse_events(sqs.drain("events")[0]["Body"].encode())
    assert f"id={event.id}" in result.output and len(event.id) == 32


def test_send_reads_data_from_a_file(sqs: Sqs, run, tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(DATA)
    result = run("send", "media/transcription.requested", "--data", f"@{path}", "--id", "f-1")
    assert result.exit_code == 0, result.output
    (event,) = parse_events(sqs.drain("events")[0]["Body"].encode())
    assert event.data["key"] == "uploads/sermon.mp3"


def test_dry_run_prints_the_envelope_and_sends_nothing(sqs: Sqs, run) -> None:
    result = run(
        "send", "media/transcription.requested", "--data", DATA, "--id", "d-1", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["id"] == "d-1"
    assert sqs.count("events") == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["media/transcription.requested", "--data", "{bucket: x}"], "not JSON"),
        (["media/transcription.requested", "--data", "[1, 2]"], "must be a JSON object, got list"),
        (["media/transcription.requested", "--data", "@/nonexistent.json"], "cannot read"),
        (["media/no.such-event", "--data", DATA], "no workflow handles 'media/no.such-event'"),
        (["media/transcription.requested", "--data", DATA, "--id", "has space"], "id must be"),
        (["NotAName", "--data", DATA], "no workflow handles"),
    ],
    ids=["bad-json", "not-object", "missing-file", "unknown-event", "bad-id", "bad-name"],
)
def test_bad_input_is_refused_and_nothing_is_sent(sqs: Sqs, run, args, says) -> None:
    # When the input is wrong
    result = run("send", *args)
    # Then the CLI exits with a usage error naming the problem, and the queue stays empty
    assert result.exit_code == 2
    assert says in result.output
    assert sqs.count("events") == 0


def test_oversize_event_is_refused_before_sending(sqs: Sqs, run) -> None:
    big = json.dumps({"blob": "x" * 300_000})
    result = run("send", "media/transcription.requested", "--data", big)
    assert result.exit_code == 2
    assert "by S3 reference" in result.output and "(oversize)" in result.output
    assert sqs.count("events") == 0


def test_unknown_environment_names_the_missing_queue(sqs: Sqs, run) -> None:
    result = run("send", "media/transcription.requested", "--data", DATA, env="nope")
    assert result.exit_code == 1
    assert "queue Sluice-nope-events does not exist" in result.output
    assert "--env" in result.output


def test_no_credentials_says_how_to_provide_them(
    aws: None, run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given no credentials anywhere (env, files, instance metadata)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # When an operator sends
    result = run("send", "media/transcription.requested", "--data", DATA)
    # Then the error names the ways to fix it
    assert result.exit_code == 1
    assert "no usable AWS credentials" in result.output
    assert "--profile" in result.output and "--endpoint-url" in result.output


def test_unknown_profile_is_named(aws: None, run, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    result = run("--profile", "nosuch", "send", "media/transcription.requested", "--data", DATA)
    assert result.exit_code == 1
    assert "AWS profile 'nosuch' not found" in result.output
