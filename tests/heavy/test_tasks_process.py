"""The real tasks process (`python -m worker.tasks`, as the Procfile runs it) against moto's
server: it dies by SIGKILL and the task comes back; on SIGTERM it finishes or hands back.

The Lambda callback API is a local HTTP endpoint that records what the process sends
(AWS_ENDPOINT_URL_LAMBDA), so the process talks to it through boto3 exactly as to Lambda
(`callback_api` and `moto_server` in conftest.py).
"""

from __future__ import annotations

import signal

import pytest

from tests.heavy.conftest import CallbackApi, Moto, put_embed_task, start_process, wait_counts


@pytest.mark.slow
def test_a_killed_process_leaves_its_task_to_reappear(
    moto_server: Moto, callback_api: CallbackApi
) -> None:
    # Given the tasks process working on a long embedding (its first heartbeat has gone out)
    put_embed_task(moto_server, segments=4000)
    proc = start_process(moto_server, callback_api, visibility_timeout_s=3)
    try:
        callback_api.wait_for("heartbeat")
        assert moto_server.counts() == (0, 1)
        # When the process is killed outright
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    # Then nothing was reported or deleted, and the task is back on the queue for another worker
    assert callback_api.ops("succeed") == [] and callback_api.ops("fail") == []
    wait_counts(moto_server, (1, 0))


@pytest.mark.slow
def test_sigterm_lets_a_short_task_finish_report_and_delete(
    moto_server: Moto, callback_api: CallbackApi
) -> None:
    # Given the process working on a short embedding
    put_embed_task(moto_server, segments=12)
    proc = start_process(moto_server, callback_api, grace_s=60)
    try:
        callback_api.wait_for("heartbeat")
        # When it is told to stop (a deploy)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        proc.kill()
    # Then it finished the task, reported success, deleted the message and exited cleanly
    assert code == 0
    assert callback_api.ops("succeed") == ["cb-proc"]
    assert moto_server.counts() == (0, 0)


@pytest.mark.slow
def test_sigterm_hands_back_a_task_that_outlives_the_grace_period(
    moto_server: Moto, callback_api: CallbackApi
) -> None:
    # Given the process working on a long embedding, with a 1 s grace period
    put_embed_task(moto_server, segments=4000)
    proc = start_process(moto_server, callback_api, grace_s=1)
    try:
        callback_api.wait_for("heartbeat")
        # When it is told to stop
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    # Then it exits within the grace period, reporting nothing, and the task is visible again
    # at once (not after the 15 min visibility timeout)
    assert code == 0
    assert callback_api.ops("succeed") == [] and callback_api.ops("fail") == []
    assert moto_server.counts() == (1, 0)
