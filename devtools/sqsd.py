"""An sqsd-equivalent driver: receive from an SQS queue, POST each message like sqsd, settle it.

Elastic Beanstalk's sqsd runs only on EB instances; this reproduces its contract for tests and
`make local`: long-poll the queue, POST the body to the worker with sqsd's headers, delete the
message on 200, otherwise leave it to reappear after `error_visibility_timeout_s` (so the queue's
redrive policy moves it to the DLQ after maxReceiveCount).
"""

from __future__ import annotations

import argparse
import http.client
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("devtools.sqsd")
USER_AGENT = "aws-sqsd/3.0.4"


@dataclass
class Stats:
    received: int = 0
    deleted: int = 0
    retried: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class SqsdDriver:
    """Drives one queue into one HTTP endpoint, `connections` POSTs at a time."""

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        endpoint: str,
        *,
        connections: int = 10,
        visibility_timeout_s: int = 60,
        error_visibility_timeout_s: int = 2,
        inactivity_timeout_s: float = 60,
        wait_time_s: int = 1,
    ) -> None:
        self.sqs = sqs_client
        self.queue_url = queue_url
        self.queue_name = queue_url.rstrip("/").rsplit("/", 1)[-1]
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.connections = connections
        self.visibility_timeout_s = visibility_timeout_s
        self.error_visibility_timeout_s = error_visibility_timeout_s
        self.inactivity_timeout_s = inactivity_timeout_s
        self.wait_time_s = wait_time_s
        self.stats = Stats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="sqsd")

    def headers(self, message: dict[str, Any]) -> dict[str, str]:
        attrs = message.get("Attributes", {})
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "X-Aws-Sqsd-Msgid": message["MessageId"],
            "X-Aws-Sqsd-Queue": self.queue_name,
            "X-Aws-Sqsd-Receive-Count": attrs.get("ApproximateReceiveCount", "1"),
            "X-Aws-Sqsd-Sender-Id": attrs.get("SenderId", ""),
        }
        first = attrs.get("ApproximateFirstReceiveTimestamp")
        if first:
            stamp = time.gmtime(int(first) / 1000)
            headers["X-Aws-Sqsd-First-Received-At"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)
        # sqsd forwards String and Number message attributes as X-Aws-Sqsd-Attr-<name>.
        for name, value in message.get("MessageAttributes", {}).items():
            if value.get("DataType", "").split(".")[0] in ("String", "Number"):
                headers[f"X-Aws-Sqsd-Attr-{name}"] = value["StringValue"]
        return headers

    def post(self, message: dict[str, Any]) -> int:
        """POST one message; the HTTP status, or 0 when the worker did not answer in time."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.inactivity_timeout_s)
        try:
            conn.request("POST", self.path, message["Body"].encode(), self.headers(message))
            response = conn.getresponse()
            response.read()
            return response.status
        except OSError as exc:
            log.warning("POST failed: %s", exc)
            return 0
        finally:
            conn.close()

    def _settle(self, message: dict[str, Any]) -> int:
        status = self.post(message)
        if status == 200:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        else:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=self.error_visibility_timeout_s,
            )
        with self._lock:
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
            if status == 200:
                self.stats.deleted += 1
            else:
                self.stats.retried += 1
        return status

    def poll_once(self) -> int:
        """Receive one batch (up to 10) and settle it; the number of messages received."""
        answer = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_time_s,
            VisibilityTimeout=self.visibility_timeout_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = answer.get("Messages", [])
        with self._lock:
            self.stats.received += len(messages)
        list(self._pool.map(self._settle, messages))
        return len(messages)

    def drain(self, *, idle_polls: int = 2, deadline_s: float = 60) -> Stats:
        """Poll until `idle_polls` polls in a row find nothing (or the deadline passes)."""
        idle, end = 0, time.monotonic() + deadline_s
        while idle < idle_polls and time.monotonic() < end:
            idle = 0 if self.poll_once() else idle + 1
        return self.stats

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll_once()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--endpoint", default="http://127.0.0.1:8000/")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--error-visibility-timeout", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    driver = SqsdDriver(
        boto3.client("sqs"),
        args.queue_url,
        args.endpoint,
        connections=args.connections,
        error_visibility_timeout_s=args.error_visibility_timeout,
        wait_time_s=20,
    )
    driver.run(threading.Event())


if __name__ == "__main__":
    main()
