"""The scheduler's own broker user, made through RabbitMQ's management API on a real node (what the
deploy-time custom resource does on Amazon MQ), and the real scheduler running as that user."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
import uuid

import pika
import pika.exceptions
import pytest

from adapters.rabbitmq_management import Management, ManagementError
from devtools.rabbitmq import RabbitNode
from sluice.errors import TransientError
from sluice.metrics import MEMORY_USED_PCT, TOKENS_READY
from sluice.scheduling.names import (
    PREFIX,
    SCHEDULER_PERMISSIONS,
    SCHEDULER_TAGS,
    SCHEDULER_USER,
    SCHEDULER_VHOST,
    Names,
)
from sluice.scheduling.registry import PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import Every
from tests.integration.broker_users import admin, amqp_url, scheduler_user
from tests.integration.scheduling import ControlTap, Recorder
from worker.scheduler.broker_metrics import BrokerFigures
from worker.scheduler.runner import Scheduler


def get(rabbit: RabbitNode, path: str, user: str = "guest", password: str = "guest"):  # noqa: S107
    """(status, JSON body) of a management API GET as `user`."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - the node's loopback http
        f"{rabbit.management_url}{path}", headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def can_log_in(rabbit: RabbitNode, user: str, password: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(amqp_url(rabbit, user, password))).close()
    except pika.exceptions.ProbableAuthenticationError:
        return False
    return True


@pytest.fixture
def user_name(rabbit):
    """The deployed user's name; removed again after the test (the node is the session's)."""
    yield SCHEDULER_USER
    admin(rabbit).delete_user(SCHEDULER_USER)


@pytest.fixture
def sched_names() -> Names:
    """Names of this test alone, still under the deployed prefix the permissions allow."""
    return Names(f"{PREFIX}.t{uuid.uuid4().hex[:10]}")


def test_the_permissions_cover_exactly_the_scheduler_prefix():
    assert PREFIX == "sluice.sched"
    assert SCHEDULER_PERMISSIONS.configure == r"^sluice\.sched\."
    assert SCHEDULER_PERMISSIONS.write == r"^sluice\.sched\."
    assert SCHEDULER_PERMISSIONS.read == r"^sluice\.sched\."
    assert (SCHEDULER_USER, SCHEDULER_TAGS, SCHEDULER_VHOST) == (
        "sluice-scheduler",
        "monitoring",
        "/",
    )


def test_the_user_is_created_idempotently_with_its_tag_and_permissions(rabbit, user_name):
    # When the user is made twice (a retried Create, an Update with the same properties)
    admin(rabbit).put_user(scheduler_user("first-password"))
    admin(rabbit).put_user(scheduler_user("first-password"))
    # Then it exists once, with only the monitoring tag and the scheduler's permissions on "/"
    status, user = get(rabbit, f"/api/users/{user_name}")
    assert status == 200
    assert user["tags"] in (["monitoring"], "monitoring")  # list since RabbitMQ 3.9's API
    status, perms = get(rabbit, f"/api/users/{user_name}/permissions")
    assert status == 200
    assert [(p["vhost"], p["configure"], p["write"], p["read"]) for p in perms] == [
        ("/", r"^sluice\.sched\.", r"^sluice\.sched\.", r"^sluice\.sched\.")
    ]
    assert can_log_in(rabbit, user_name, "first-password")


def test_an_update_changes_the_password(rabbit, user_name):
    admin(rabbit).put_user(scheduler_user("first-password"))
    admin(rabbit).put_user(scheduler_user("second-password"))
    assert not can_log_in(rabbit, user_name, "first-password")
    assert can_log_in(rabbit, user_name, "second-password")


def test_delete_removes_the_user_and_a_second_delete_finds_none(rabbit, user_name):
    admin(rabbit).put_user(scheduler_user("pw"))
    assert admin(rabbit).delete_user(user_name) is True
    assert get(rabbit, f"/api/users/{user_name}")[0] == 404
    assert not can_log_in(rabbit, user_name, "pw")
    assert admin(rabbit).delete_user(user_name) is False


def test_a_refused_admin_login_is_an_error_that_names_the_call_not_the_password(rabbit):
    wrong = Management(rabbit.management_url, "guest", "not-the-password")
    with pytest.raises(ManagementError) as caught:
        wrong.put_user(scheduler_user("secret-of-the-user"))
    message = str(caught.value)
    assert "401" in message and f"/api/users/{SCHEDULER_USER}" in message
    assert "not-the-password" not in message and "secret-of-the-user" not in message
    assert caught.value.status == 401


def test_an_unreachable_management_api_is_an_error_too():
    with pytest.raises(ManagementError, match="cannot reach"):
        Management("http://127.0.0.1:9", "guest", "guest", timeout_s=2).delete_user("x")


@pytest.mark.slow
def test_the_real_scheduler_runs_as_the_scheduler_user(rabbit, user_name, sched_names, caplog):
    # Given the scheduler user, made as the deploy makes it
    admin(rabbit).put_user(scheduler_user("sched-password"))
    url = amqp_url(rabbit, user_name, "sched-password")
    ticks = Recorder()

    def poison(tick: Tick) -> None:
        raise TransientError("upstream 503")

    registry = Registry(
        [
            PeriodicTask("tick", Every(0.2), action=ticks),
            # A transient failure is retried (nack), then dead-lettered (a publish of its own).
            PeriodicTask("poison", Every(0.2), action=poison, max_attempts=2),
        ]
    )
    caplog.set_level(logging.WARNING, logger="sluice.scheduler")
    # When the real scheduler runs as that user: topology, tokens, consumers, lifecycle events,
    # the reconciler's leader lock and event listener, retries and a dead-lettered tick
    with ControlTap(rabbit.url, sched_names) as tap, Scheduler(registry, url, names=sched_names):
        runs = ticks.wait_for(5, timeout=30)
        tap.wait_for("dead_lettered", "poison", timeout=30)
        # and its broker figures are measured as that user (passive declares, GET /api/nodes)
        figures = BrokerFigures(url, registry, sched_names, management=rabbit.management_url)
        deadline = time.monotonic() + 30
        found = figures.measure()
        while not any(f.name == MEMORY_USED_PCT for f in found):
            assert time.monotonic() < deadline, "no node figures as the scheduler user"
            time.sleep(0.5)
            found = figures.measure()
    # Then every tick ran once, something was dead-lettered, and nothing was refused to the user
    assert len({r.due for r in runs}) == len(runs)
    assert tap.of("dead_lettered", "poison")
    assert {f.name for f in found} >= {TOKENS_READY, MEMORY_USED_PCT}
    # (a busy node may still drop a connection, which the scheduler rides out by reconnecting;
    # a permission refused to the user would show up as one of these)
    for refusal in ("ACCESS_REFUSED", "NOT_ALLOWED"):
        assert refusal not in caplog.text


def test_the_scheduler_user_cannot_step_outside_its_names(rabbit, user_name):
    admin(rabbit).put_user(scheduler_user("pw"))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(rabbit, user_name, "pw")))
    try:
        # a queue or an exchange of anyone else's
        for declare in (
            lambda ch: ch.queue_declare("orders", durable=True),
            lambda ch: ch.exchange_declare("orders", "direct"),
            # publishing through the default exchange (amq.default) straight into a queue
            lambda ch: (ch.confirm_delivery(), ch.basic_publish("", "orders", b"x")),
        ):
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                declare(channel)
            assert refused.value.reply_code == 403  # ACCESS_REFUSED
    finally:
        connection.close()
    # It may read the node figures, but it is no administrator
    assert get(rabbit, "/api/nodes", user_name, "pw")[0] == 200
    assert get(rabbit, "/api/users", user_name, "pw")[0] in (401, 403)
    assert get(rabbit, "/api/permissions", user_name, "pw")[0] in (401, 403)
