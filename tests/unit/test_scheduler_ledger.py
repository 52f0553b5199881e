"""The tick ledger's rules, the same for the coordination table (moto) and process memory:
a tick is claimed at most once, a live claim excludes others, an expired one is taken over and
its holder fenced; a retry re-claims its own tick."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from devtools.local.resources import ENV, REGION, create_coordination_table
from sluice import naming
from sluice.scheduling.registry import PeriodicTask, Tick
from sluice.scheduling.schedule import Every, latest_due
from worker.scheduler.ledger import Claim, Ledger, MemoryLedger, TableLedger

LEASE = 1000  # ms


@pytest.fixture(params=["table", "memory"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        table = naming.coordination_table(ENV)
        create_coordination_table(ddb, table)
        yield TableLedger(ddb, table, "sluice.sched")


def test_a_tick_is_claimed_once(ledger: Ledger) -> None:
    # Given a claimed and finished tick
    claimed = ledger.claim("t", 1000, 1000, LEASE, "a")
    assert claimed is not None and (claimed.fence, claimed.previous) == (1, None)
    assert ledger.finish("t", 1, "done")
    # Then nobody claims it again, nor an earlier one, however late
    assert ledger.claim("t", 1000, 99_000, LEASE, "b") is None
    assert ledger.claim("t", 800, 99_000, LEASE, "b") is None
    # and the next tick is claimed with the next fence, replacing the finished claim
    claimed = ledger.claim("t", 1200, 1200, LEASE, "b")
    assert claimed is not None and claimed.fence == 2
    assert claimed.previous == Claim(1000, 1, 2000, "done", "a")


def test_a_live_claim_excludes_later_ticks_and_an_expired_one_is_taken_over(ledger) -> None:
    # Given a runner holding tick 1000 (lease to 2000)
    first = ledger.claim("t", 1000, 1000, LEASE, "a")
    assert first is not None
    old = first.fence
    # Then a later tick waits while the lease is live (no overlapping runs)
    assert ledger.claim("t", 1200, 1500, LEASE, "b") is None
    # and the same tick is never claimed again, not even once the lease expired
    assert ledger.claim("t", 1000, 5000, LEASE, "b") is None
    # When the lease expires, a later tick is taken over with a higher fence
    taken = ledger.claim("t", 2200, 2200, LEASE, "b")
    assert taken is not None and taken.fence > old
    assert taken.previous is not None and taken.previous.state == "running"  # abandoned
    new = taken.fence
    # Then the old holder is fenced: it can neither renew nor finish
    assert not ledger.renew("t", old, 9000)
    assert not ledger.finish("t", old, "done")
    # while the new one can
    assert ledger.renew("t", new, 4000)
    assert ledger.finish("t", new, "done")
    claim = ledger.read("t")
    assert claim is not None and (claim.tick, claim.fence, claim.state) == (2200, new, "done")


def test_a_renewed_lease_keeps_others_out(ledger) -> None:
    claimed = ledger.claim("t", 1000, 1000, LEASE, "a")
    assert claimed is not None
    assert ledger.renew("t", claimed.fence, 5000)
    assert ledger.claim("t", 1200, 4000, LEASE, "b") is None


def test_a_retry_reclaims_its_own_tick_once(ledger) -> None:
    claimed = ledger.claim("t", 1000, 1000, LEASE, "a")
    assert claimed is not None and ledger.finish("t", claimed.fence, "retry")
    again = ledger.claim("t", 1000, 1100, LEASE, "b")
    assert again is not None and again.fence == claimed.fence + 1
    assert ledger.claim("t", 1000, 1100, LEASE, "c") is None


def test_tasks_are_independent(ledger) -> None:
    for task in ("a", "b"):
        claimed = ledger.claim(task, 1000, 1000, LEASE, "x")
        assert claimed is not None and claimed.fence == 1


def test_a_late_token_runs_only_the_latest_due_tick() -> None:
    # A token for 100 s arriving at 135.5 s runs tick 130 s; 100, 110 and 120 are missed
    assert latest_due(Every(10), 100.0, 135.5) == (130.0, 3)
    # an on-time (or early) token runs its own tick
    assert latest_due(Every(10), 100.0, 100.002) == (100.0, 0)
    assert latest_due(Every(10), 100.0, 99.0) == (100.0, 0)


def test_every_send_of_a_tick_is_the_same_event() -> None:
    task = PeriodicTask("reindex", Every(60), event="media/embedding.requested")
    first = task.tick_event(Tick("reindex", 120.0, attempt=1)).to_json()
    again = task.tick_event(Tick("reindex", 120.0, attempt=3)).to_json()
    assert first == again


def test_without_a_table_the_scheduler_says_loudly_that_it_keeps_the_ledger_in_memory(caplog):
    from sluice.scheduling.names import Names
    from sluice.scheduling.registry import REGISTRY
    from sluice.settings import SchedulerSettings
    from worker.scheduler.__main__ import build

    # Given no coordination table in the settings
    with caplog.at_level("WARNING", logger="sluice.scheduler"):
        scheduler = build(REGISTRY, "amqp://x", SchedulerSettings.of(), names=Names())
    # Then it runs on a process-local ledger and says what that costs
    assert isinstance(scheduler.ledger, MemoryLedger)
    assert "NO TICK LEDGER" in caplog.text and "may run twice" in caplog.text
    # and with one, every runner shares the table's ledger under the scheduler's prefix
    caplog.clear()
    settings = SchedulerSettings.of(coordination_table="Sluice-dev-coordination", lease_s=3)
    scheduler = build(REGISTRY, "amqp://x", settings, names=Names(), dynamodb=object())
    assert isinstance(scheduler.ledger, TableLedger)
    assert scheduler.ledger.table == "Sluice-dev-coordination"
    assert all(r.ledger is scheduler.ledger and r.lease_s == 3 for r in scheduler.runners)
    assert "NO TICK LEDGER" not in caplog.text


def test_an_event_task_sends_nothing_once_its_lease_lapsed() -> None:
    import time

    from sluice.errors import TransientError
    from sluice.scheduling.names import Names
    from worker.scheduler.runner import TaskRunner

    sent = []
    task = PeriodicTask("reindex", Every(60), event="media/embedding.requested")
    runner = TaskRunner(
        task, "amqp://x", names=Names(), send=sent.append, lease_s=5, clock=lambda: 130.0
    )
    tick = Tick("reindex", 120.0)
    # Within its lease the tick's event goes out
    runner._lease_end = time.monotonic() + 5
    runner._act(tick)
    assert [e.id for e in sent] == ["tick-reindex-120000"]
    # Past it (frozen, cut off from the ledger) nothing is sent: the attempt fails transiently
    runner._lease_end = time.monotonic() - 0.001
    with pytest.raises(TransientError, match="lease"):
        runner._act(tick)
    assert len(sent) == 1


def test_a_tick_superseded_before_its_action_starts_does_not_run() -> None:
    # A process paused between its claim and the action (SIGSTOP, a long GC) wakes after the
    # next tick fell due: only the latest due tick runs, so this one is given up (missed).
    from sluice.scheduling.names import Names
    from worker.scheduler.runner import TaskRunner

    ran = []
    now = [125.0]
    task = PeriodicTask("reindex", Every(60), action=ran.append)
    runner = TaskRunner(task, "amqp://x", names=Names(), lease_s=5, clock=lambda: now[0])
    assert runner._act(Tick("reindex", 120.0)) is True and len(ran) == 1
    now[0] = 181.0  # the tick of 180 fell due
    assert runner._act(Tick("reindex", 120.0)) is False and len(ran) == 1
    # an operator's redrive runs the old tick whatever its age
    assert runner._act(Tick("reindex", 120.0), latest_only=False) is True and len(ran) == 2
