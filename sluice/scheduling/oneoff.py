"""One-off tasks: a registered task run once at an exact time, seconds to a year ahead.

A one-off waits on the broker in a chain of hops through *wait queues*, each with a fixed
queue-level TTL (a power of two milliseconds, up to the TTL ceiling), then is dead-lettered into
the one-off run queue, where a scheduler process takes it and either sends it on its next hop
(the largest wait that still ends before it is due) or, within the last hop, claims it in the
tick ledger and runs it at its due time. A queue-level TTL gives every message of a queue the
same wait, so the queue expires them in arrival order: a long one-off never holds a short one
behind it, as per-message TTLs in one shared queue would (RabbitMQ expires only at the head).

Each one-off also has a record in the coordination table (worker/scheduler/oneoff_ledger.py):
its task, due time, payload and state (`pending`, `running`, `retry`, `done`, `failed`,
`cancelled`). The record is its tick-ledger item, so the claim that starts it succeeds once and
a cancel is a claim that never runs. This module holds what the scheduler and the CLI share:
the message, the queue names and the choice of the next hop.

A one-off runs in a process of its task's consumer group: the last stretch of one whose task is
of another group is forwarded to that group's run queue (`.oneoff.run.<group>`), which only the
group's processes consume.

The record also says when a scheduler process should next see the one-off (`expect`): when its
current hop ends, if a hop of at least MARK_HOP_MS follows (each such hop writes the next
`expect`, unless the new time is within half the sweep's grace of the one it holds), else its
run time (the claim then changes the record). A record still pending well
after its `expect` lost its message (a purged queue, a replaced broker): the sweep
(worker/scheduler/oneoff.py) sends it again, and the claim keeps it to one run.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.envelope import Event
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Tick

# RabbitMQ's largest message TTL: x-message-ttl and a message's `expiration` must be
# non-negative 32-bit integers of milliseconds ("0 <= n <= 2^32-1", rabbitmq.com/docs/ttl), about
# 49.7 days. tests/integration/test_scheduler_oneoff.py checks it on the real server.
RABBITMQ_MAX_TTL_MS = 2**32 - 1
# The shortest wait queue (16 ms).
MIN_WAIT_EXP = 4
# A hop is taken only if it ends at least this long before the due time: the last stretch, in
# which the scheduler claims the one-off and waits out the rest (a hop's own transit and the
# claim's write take milliseconds to tens of them; the stretch absorbs both).
HOP_SLACK_MS = 300
# Hops at least this long write when the one-off is next expected: at most about 30 writes for a
# year ahead, none in the last second (where a write would cost the others' precision).
MARK_HOP_MS = 1024
ONEOFF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RUN_KEY = "run"


def waits(max_ttl_ms: int) -> tuple[int, ...]:
    """The wait queues' TTLs (ms): powers of two from 16 ms up to the ceiling."""
    if max_ttl_ms < 2**MIN_WAIT_EXP:
        raise ValueError(f"the TTL ceiling must be at least {2**MIN_WAIT_EXP} ms, got {max_ttl_ms}")
    top = min(max_ttl_ms, RABBITMQ_MAX_TTL_MS).bit_length() - 1
    return tuple(2**e for e in range(MIN_WAIT_EXP, top + 1))


def next_hop(remaining_ms: float, wait_ms: tuple[int, ...]) -> int | None:
    """The wait (ms) of the next hop for a one-off due in `remaining_ms`, or None: the rest is
    shorter than any hop, wait it out and run."""
    fitting = [w for w in wait_ms if w <= remaining_ms - HOP_SLACK_MS]
    return fitting[-1] if fitting else None


def expect_after(at: float, now: float, hop_ms: int | None, wait_ms: tuple[int, ...]) -> float:
    """When (epoch s) a scheduler process should next see, or claim, a one-off that runs at `at`
    and is sent now on a hop of `hop_ms` (None: to a run queue): back from the hop when a marked
    hop (MARK_HOP_MS or longer, which writes the next one) follows it, else at its run time."""
    back = now + (hop_ms or 0) / 1000
    following = next_hop((at - back) * 1000, wait_ms)
    return back if following is not None and following >= MARK_HOP_MS else at


def swept_expect(at: float, now: float, wait_ms: tuple[int, ...], wait_s: float) -> float:
    """When a scheduler process should next see a one-off the sweep sends again now: as
    `expect_after` for the hop that send goes on (its copy is out of sight until that hop ends),
    and not before `wait_s` from now (the sweep's backoff for copies nobody takes)."""
    hop = next_hop((at - now) * 1000, wait_ms)
    return max(expect_after(at, now, hop, wait_ms), now + wait_s)


def worth_noting(expect: float, noted: float | None, grace_s: float) -> bool:
    """Whether a one-off's record must be told its new `expect`: the sweep takes a record for
    lost `grace_s` after the time it holds (`noted`), so a time within half of that is left
    unwritten (the next handling still comes before the sweep would look; a one-off seconds
    ahead writes nothing, and no write holds up the hops of those due sooner)."""
    return expect > (noted or 0.0) + grace_s / 2


def hops(remaining_ms: float, wait_ms: tuple[int, ...]) -> int:
    """How many hops a one-off due in `remaining_ms` takes (transit times left out)."""
    count = 0
    while (hop := next_hop(remaining_ms, wait_ms)) is not None:
        remaining_ms -= hop
        count += 1
    return count


def exchange(names: Names) -> str:
    """The one-off exchange: wait queues by `wait.<ms>`, the run queue by `run`."""
    return f"{names.prefix}.oneoff"


def run_queue(names: Names) -> str:
    return f"{names.prefix}.oneoff.run"


def group_queue(names: Names, group: str) -> str:
    """The run queue of consumer group `group`'s processes: one-offs of its tasks, due now."""
    return f"{names.prefix}.oneoff.run.{group}"


def group_key(group: str) -> str:
    return f"{RUN_KEY}.{group}"


def sweeper_queue(names: Names) -> str:
    """The sweep's leader lock: an exclusive queue, held by one process at a time."""
    return f"{names.prefix}.oneoff.sweeper"


def wait_queue(names: Names, wait_ms: int) -> str:
    return f"{names.prefix}.oneoff.wait.{wait_ms}"


def wait_key(wait_ms: int) -> str:
    return f"wait.{wait_ms}"


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class OneOff:
    """One run of `task` at `due` (epoch seconds), with `payload` (an event task's data)."""

    id: str
    task: str
    due: float
    payload: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    # A retry runs after its backoff but is still the same tick (`due`): it waits until here.
    retry_at: float | None = None
    # When a scheduler process should next see it (its record's `expect` when it was sent):
    # where a copy of it is, not what it is, so equality leaves it out.
    expect: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not ONEOFF_ID.fullmatch(self.id):
            raise ValueError(f"a one-off id is 1-64 chars of [A-Za-z0-9_-], got {self.id!r}")

    @property
    def at(self) -> float:
        """When it runs: its due time, or a retry's time."""
        return self.due if self.retry_at is None else self.retry_at

    @property
    def key(self) -> int:
        """Its due time in milliseconds: the tick it claims in the ledger."""
        return round(self.due * 1000)

    @property
    def due_iso(self) -> str:
        return datetime.fromtimestamp(self.due, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def tick(self) -> Tick:
        return Tick(self.task, self.due, self.attempt, data=dict(self.payload))

    def event(self, task: PeriodicTask) -> Event:
        """The event an event task's one-off sends: the task's data, the payload over it; the id
        is the one-off's, so every send of it is the same event (the worker starts it once)."""
        if task.event is None:
            raise ValueError(f"task {task.name} runs a function and sends no event")
        data = {**task.data, **self.payload, "task": task.name, "scheduled_at": self.due_iso}
        return Event(name=task.event, data=data, id=f"at-{self.id}", ts=self.due_iso)

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "oneoff": self.id, "task": self.task, "due": self.due}
        if self.payload:
            body["payload"] = dict(self.payload)
        if self.attempt > 1:
            body["attempt"] = self.attempt
        if self.retry_at is not None:
            body["retry_at"] = self.retry_at
        if self.expect is not None:
            body["expect"] = self.expect
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> OneOff:
        """The one-off in `body`; ValueError when it is not one."""
        try:
            doc = json.loads(body)
            return cls(
                str(doc["oneoff"]),
                str(doc["task"]),
                float(doc["due"]),
                dict(doc.get("payload") or {}),
                int(doc.get("attempt", 1)),
                None if doc.get("retry_at") is None else float(doc["retry_at"]),
                None if doc.get("expect") is None else float(doc["expect"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a one-off: {body[:200]!r}") from exc


def declare(
    channel: Any, names: Names, wait_ms: tuple[int, ...] = (), groups: tuple[str, ...] = ()
) -> None:
    """Declare the one-off exchange, run queue, the given wait queues and groups' run queues
    (idempotent; quorum, durable, at-least-once dead-lettering from each wait queue into the run
    queue)."""
    ex = exchange(names)
    channel.exchange_declare(ex, "direct", durable=True)
    runs = [(run_queue(names), RUN_KEY), *((group_queue(names, g), group_key(g)) for g in groups)]
    for queue, routing_key in runs:
        channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish"},
        )
        channel.queue_bind(queue, ex, routing_key=routing_key)
    for ms in wait_ms:
        queue = wait_queue(names, ms)
        channel.queue_declare(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": ms,
                "x-dead-letter-exchange": ex,
                "x-dead-letter-routing-key": RUN_KEY,
                # The one-off leaves the wait queue only once the run queue has it.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        channel.queue_bind(queue, ex, routing_key=wait_key(ms))
