"""post_webhook against a loopback endpoint: what it sends, and how each answer is classified."""

from __future__ import annotations

import socket

import pytest

from lambdas.steps.post_webhook import handler as step
from sluice.errors import BusinessError, TransientError
from tests.lambdas.webhook_server import webhook_endpoint


def payload(url: str) -> dict:
    return {
        "job_id": "job-1",
        "correlation_id": "corr-1",
        "event_id": "ev-1",
        "event_name": "webhook/requested",
        "url": url,
        "payload": {"order": 42, "total": "9.90"},
    }


def test_a_delivery_posts_the_payload_as_json_with_the_event_id_as_idempotency_key(lambda_context):
    with webhook_endpoint() as hook:
        result = step.handler(payload(hook.url), lambda_context)
    assert result == {"job_id": "job-1", "status_code": 200}
    (got,) = hook.received
    assert got["path"] == "/hook"
    assert got["body"] == {
        "id": "ev-1",
        "name": "webhook/requested",
        "data": {"order": 42, "total": "9.90"},
    }
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["headers"]["Idempotency-Key"] == "ev-1"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_an_unavailable_endpoint_is_a_transient_failure(status, lambda_context):
    with webhook_endpoint() as hook:
        hook.script.append((status, 0))
        with pytest.raises(TransientError) as err:
            step.handler(payload(hook.url), lambda_context)
    assert err.value.code == "webhook_unavailable"
    assert str(status) in str(err.value)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_an_endpoint_refusing_the_delivery_is_a_business_failure(status, lambda_context):
    with webhook_endpoint() as hook:
        hook.script.append((status, 0))
        with pytest.raises(BusinessError) as err:
            step.handler(payload(hook.url), lambda_context)
    assert err.value.code == "webhook_refused"
    assert "endpoint says no" in str(err.value)


def test_a_redirect_is_not_followed(lambda_context):
    with webhook_endpoint() as hook:
        hook.script.append((302, 0))
        with pytest.raises(BusinessError, match="302"):
            step.handler(payload(hook.url), lambda_context)
    assert len(hook.received) == 1


def test_a_slow_endpoint_times_out_as_a_transient_failure():
    with webhook_endpoint() as hook:
        hook.script.append((200, 1.5))
        with pytest.raises(TransientError) as err:
            step.post(hook.url, {"a": 1}, idempotency_key="k", timeout_s=0.3)
    assert err.value.code == "webhook_unreachable"


def test_a_closed_port_is_a_transient_failure(lambda_context):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="unreachable"):
        step.handler(payload(f"http://127.0.0.1:{port}/hook"), lambda_context)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plain http off loopback
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "https:///no-host",
        "not a url",
    ],
)
def test_only_https_or_loopback_http_urls_are_posted_to(url, lambda_context):
    with pytest.raises(BusinessError) as err:
        step.handler(payload(url), lambda_context)
    assert err.value.code == "bad_url"


def test_https_and_loopback_urls_are_accepted():
    for url in ("https://hooks.example.com/x", "http://localhost:8080/x", "http://[::1]:9/x"):
        assert step.check_url(url) == url


def test_a_payload_without_url_is_refused(lambda_context):
    with pytest.raises(BusinessError, match="url"):
        step.handler({"event_id": "e", "event_name": "webhook/requested"}, lambda_context)
