"""One log schema for the Lambdas and the worker's three processes: Powertools Logger's lines.

One JSON object a line: `level`, `location`, `message`, `timestamp` (RFC 3339, UTC), `service`,
`correlation_id` (the job's event id) and the line's own keys (`exception` and `stack_trace`
with an error). The Lambdas log through Powertools' Logger made with OPTIONS
(lambdas/common/runtime.py); a worker process calls `configure`, which puts Powertools' own
formatter with the same OPTIONS on the root logger, so every logger of the process (its own,
botocore's, pika's) writes that schema, and fills the context fields (the correlation id of the
message or task being handled) from context variables on every line.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

# Powertools Logger / formatter options: the same timestamps everywhere.
OPTIONS: Mapping[str, Any] = {"utc": True, "use_rfc3339": True}


class _Context(logging.Filter):
    """Puts each context variable's current value on the record (a field of the line)."""

    def __init__(self, fields: Mapping[str, contextvars.ContextVar[str]]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in self.fields.items():
            setattr(record, name, var.get())
        return True


def configure(
    service: str,
    context: Mapping[str, contextvars.ContextVar[str]],
    *,
    stream: TextIO | None = None,
    level: int = logging.INFO,
) -> logging.Handler:
    """Route every logger of this process to `stream` (stdout) as Powertools Logger's lines.

    Idempotent (gunicorn may import the app twice): the root logger's handlers are replaced.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LambdaPowertoolsFormatter(service=service, **OPTIONS))
    handler.addFilter(_Context(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore's INFO/DEBUG lines say nothing an operator needs and cost CPU per request.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    return handler
