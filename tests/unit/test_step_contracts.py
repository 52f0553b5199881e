"""The step and heavy-task contracts (sluice/steps.py): every declared step and every task has
one, and a payload that does not fit is refused naming the step and the field."""

from __future__ import annotations

import pytest

from sluice import catalog, workflows
from sluice.errors import BusinessError
from sluice.steps import CONTRACTS, ContractError, check_input, check_output


def test_every_declared_step_and_every_heavy_task_has_its_contract():
    declared = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)
    needed = {*workflows.step_names(declared), catalog.TRANSCODE_TASK, catalog.EMBED_TASK}
    assert needed <= set(CONTRACTS), sorted(needed - set(CONTRACTS))


def test_a_missing_or_unknown_field_is_named_and_is_a_business_error():
    with pytest.raises(ContractError, match="start_transcription input: format: Field required"):
        check_input("start_transcription", {"job_id": "j", "bucket": "b", "key": "k"})
    with pytest.raises(ContractError, match="check_transcription input: jbo: unknown field"):
        check_input("check_transcription", {"transcription_job": "t", "jbo": 1})
    with pytest.raises(BusinessError) as err:
        check_input("post_webhook", {"url": "", "event_id": "e", "event_name": "a/b"})
    assert err.value.code == "bad_input"


def test_a_result_that_does_not_fit_is_the_steps_fault():
    check_output("post_webhook", {"job_id": "j", "status_code": 204, "extra": "allowed"})
    with pytest.raises(ContractError) as err:
        check_output("post_webhook", {"job_id": "j"})
    assert err.value.code == "bad_output" and "status_code" in str(err.value)


def test_a_heavy_tasks_data_takes_an_object_or_a_uri_where_the_worker_does():
    output = {"bucket": "m", "prefix": "embeddings/j/"}
    check_input(catalog.EMBED_TASK, {"transcript": "s3://m/t.json", "output": output})
    check_input(catalog.EMBED_TASK, {"transcript": {"bucket": "m", "key": "t"}, "output": output})
    with pytest.raises(ContractError, match=r"media/transcode input: output\.prefix"):
        check_input(
            catalog.TRANSCODE_TASK,
            {"source": {"bucket": "m", "key": "a.wav"}, "output": {"bucket": "m"}},
        )
