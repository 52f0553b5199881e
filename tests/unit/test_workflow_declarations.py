"""Workflow declarations (sluice.workflows): the repository's, the routes derived from them, and
every invalid declaration refused with the file and the setting named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice import catalog, workflows
from sluice.workflows import (
    DURABLE_MAX_EXECUTION_S,
    FAILURE_GRACE_S,
    Concurrency,
    Declaration,
    DeclarationError,
    Flow,
    Idempotency,
    Priority,
    Throttle,
)

ROOT = Path(__file__).resolve().parents[2]


def declare(root: Path, name: str, text: str) -> Path:
    folder = root / "lambdas" / "workflows" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workflow.toml").write_text(text)
    return root / "lambdas" / "workflows"


def load_one(tmp_path: Path, text: str, name: str = "x") -> Declaration:
    root = declare(tmp_path, name, text)
    return workflows.load(root, known_events=catalog.EVENTS)[name]


def test_the_repository_declares_each_workflow_beside_its_handler():
    found = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)
    assert set(found) == set(catalog.WORKFLOWS)
    for name, decl in found.items():
        assert (catalog.WORKFLOWS_ROOT / name / "handler.py").is_file()
        assert decl.id == name and decl.events
        for step in decl.lambdas:
            assert (ROOT / "lambdas" / "steps" / step / "handler.py").is_file(), step


def test_the_routes_are_the_declarations_events():
    found = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)
    assert dict(catalog.ROUTES) == workflows.routes(found)
    assert catalog.workflows_for("media/transcription.completed") == (
        "embed_transcript",
        "transcode_audio",
    )
    assert catalog.workflows_for("media/uploaded") == ("transcribe_audio",)
    assert catalog.workflows_for("billing/invoice.paid") == ()


def test_the_routes_document_round_trips():
    found = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)
    names, routes, cancels = workflows.read_routes_document(workflows.routes_document(found))
    assert names == tuple(sorted(found))
    assert routes == workflows.routes(found)
    assert cancels == workflows.cancels(found) == dict(catalog.CANCELS)


def test_cancel_on_events_are_known_and_name_what_they_cancel(tmp_path):
    decl = load_one(
        tmp_path,
        'events = ["media/uploaded"]\n'
        '[[cancel_on]]\nevent = "media/deleted"\nmatch = "data.media_id"\n',
    )
    assert workflows.cancels({"x": decl}) == {"media/deleted": (("x", "data.media_id"),)}
    # an event that only cancels is still one the events queue takes
    assert catalog.is_known("media/deleted") == bool(catalog.cancels_for("media/deleted"))


def test_defaults_and_what_derives_from_them(tmp_path):
    decl = load_one(tmp_path, 'events = ["media/uploaded"]\n')
    assert decl.retries == 3 and decl.attempts == 4
    assert decl.on_failure == "on_failure" and decl.lambdas == ("on_failure",)
    assert decl.execution_timeout_s == decl.timeout_s + FAILURE_GRACE_S
    assert decl.concurrency is None


def test_concurrency_as_declared(tmp_path):
    decl = load_one(
        tmp_path,
        'events = ["webhook/requested"]\n'
        '[concurrency]\nlimit = 10\nkey = "data.customer_id"\nkey_limit = 1\n',
    )
    assert decl.concurrency == Concurrency(limit=10, key="data.customer_id", key_limit=1)


def test_flow_control_as_declared_reaches_the_worker(tmp_path):
    root = declare(
        tmp_path,
        "x",
        'events = ["webhook/requested"]\n'
        '[idempotency]\nkey = ["data.customer_id", "data.checksum"]\nwindow_s = 600\n'
        '[throttle]\nlimit = 10\nperiod_s = 60\nkey = "data.customer_id"\n'
        '[priority]\nkey = "data.tier"\nmax = 3\naging_s = 120\n',
    )
    decl = workflows.load(root, known_events=catalog.EVENTS)
    flow = decl["x"].flow()
    assert flow == Flow(
        idempotency=Idempotency(key=("data.customer_id", "data.checksum"), window_s=600),
        throttle=Throttle(limit=10, period_s=60, key="data.customer_id"),
        priority=Priority(key="data.tier", max=3, aging_s=120),
    )
    # The worker reads it from the routes document the stacks stage into its bundle.
    assert workflows.read_flow_document(workflows.routes_document(decl)) == {"x": flow}
    assert not load_one(tmp_path, 'events = ["media/uploaded"]\n', name="y").controlled


def test_a_priority_with_concurrency_orders_the_slots_queue_and_costs_the_worker_nothing(tmp_path):
    decl = load_one(
        tmp_path,
        'events = ["media/uploaded"]\n[concurrency]\nlimit = 2\n'
        '[priority]\nkey = "data.tier"\nmax = 3\n',
    )
    assert decl.priority is not None
    assert decl.priority == Priority(key="data.tier", max=3)
    assert not decl.controlled  # the run keeps the slots' queue; the worker decides nothing
    assert decl.priority.of({"data": {"tier": 7}}) == 3  # clamped to max
    assert decl.priority.of({"data": {"tier": "gold"}}) == 0  # not an integer: the default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'events = ["media/uplaoded"]\n',
            "lambdas/workflows/x/workflow.toml: events: unknown event 'media/uplaoded'; known "
            "events: customer/deleted, media/deleted, media/embedding.requested,",
        ),
        (
            'events = ["Media Uploaded"]\n',
            "lambdas/workflows/x/workflow.toml: events: malformed event name 'Media Uploaded'",
        ),
        ("events = []\n", "lambdas/workflows/x/workflow.toml: events: "),
        ("retries = 2\n", "lambdas/workflows/x/workflow.toml: events: required"),
        (
            'events = ["media/uploaded"]\n[concurrency]\nlimit = 0\n',
            "lambdas/workflows/x/workflow.toml: concurrency.limit: must be >= 1, got 0",
        ),
        (
            'events = ["media/uploaded"]\n[concurrency]\nkey = "data.c"\nkey_limit = 0\n',
            "lambdas/workflows/x/workflow.toml: concurrency.key_limit: must be >= 1, got 0",
        ),
        (
            'events = ["media/uploaded"]\n[concurrency]\nkey_limit = 2\n',
            "lambdas/workflows/x/workflow.toml: concurrency: key_limit needs key",
        ),
        (
            'events = ["media/uploaded"]\n[concurrency]\nkey = "data[0]"\nkey_limit = 2\n',
            "lambdas/workflows/x/workflow.toml: concurrency.key: must be a dotted path",
        ),
        (
            f'events = ["media/uploaded"]\ntimeout_s = {DURABLE_MAX_EXECUTION_S}\n',
            f"lambdas/workflows/x/workflow.toml: timeout_s: must be <= "
            f"{DURABLE_MAX_EXECUTION_S - FAILURE_GRACE_S} s, got {DURABLE_MAX_EXECUTION_S}: "
            "Lambda durable functions allow an ExecutionTimeout of at most 31622400 s",
        ),
        (
            'events = ["media/uploaded"]\ntimeout_s = 10\n',
            "lambdas/workflows/x/workflow.toml: timeout_s: must be >= 60, got 10",
        ),
        (
            'events = ["media/uploaded"]\nretries = -1\n',
            "lambdas/workflows/x/workflow.toml: retries: must be >= 0, got -1",
        ),
        (
            'events = ["media/uploaded"]\nretrys = 2\n',
            "lambdas/workflows/x/workflow.toml: retrys: unknown setting",
        ),
        (
            'id = "y"\nevents = ["media/uploaded"]\n',
            "lambdas/workflows/x/workflow.toml: id: must be the folder's name 'x', got 'y'",
        ),
        (
            'events = ["media/uploaded"]\nsteps = ["a", "on_failure"]\n',
            "lambdas/workflows/x/workflow.toml: on_failure: 'on_failure' is also one of the steps",
        ),
        (
            'events = ["media/uploaded"]\nuses = ["s3"]\n',
            "lambdas/workflows/x/workflow.toml: uses: ",
        ),
        ('events = ["media/uploaded"\n', "lambdas/workflows/x/workflow.toml: "),
        (
            'events = ["media/uploaded"]\n[[cancel_on]]\nevent = "media/gone"\nmatch = "data.m"\n',
            "lambdas/workflows/x/workflow.toml: cancel_on.event: unknown event 'media/gone'",
        ),
        (
            'events = ["media/uploaded"]\n[[cancel_on]]\nevent = "media/uploaded"\n'
            'match = "data.m"\n',
            "lambdas/workflows/x/workflow.toml: cancel_on: 'media/uploaded' also starts the "
            "workflow",
        ),
        (
            'events = ["media/uploaded"]\n[[cancel_on]]\nevent = "media/deleted"\n'
            'match = "data[0]"\n',
            "lambdas/workflows/x/workflow.toml: cancel_on.match: must be a dotted path",
        ),
        (
            'events = ["media/uploaded"]\n[[cancel_on]]\nevent = "media/deleted"\n',
            "lambdas/workflows/x/workflow.toml: cancel_on.match: required",
        ),
        # Flow control (docs/flow-control.md).
        (
            'events = ["media/uploaded"]\n[rate_limit]\nlimit = 0\nperiod_s = 60\n',
            "lambdas/workflows/x/workflow.toml: rate_limit.limit: must be >= 1, got 0",
        ),
        (
            'events = ["media/uploaded"]\n[throttle]\nlimit = 1001\nperiod_s = 60\n',
            "lambdas/workflows/x/workflow.toml: throttle.limit: must be <= 1000, got 1001",
        ),
        (
            'events = ["media/uploaded"]\n[throttle]\nlimit = 1\nperiod_s = 86401\n',
            "lambdas/workflows/x/workflow.toml: throttle.period_s: must be <= 86400, got 86401",
        ),
        (
            'events = ["media/uploaded"]\n[throttle]\nlimit = 1\nperiod_s = 9\nkey = "a b"\n',
            "lambdas/workflows/x/workflow.toml: throttle.key: must be a dotted path",
        ),
        (
            'events = ["media/uploaded"]\n[idempotency]\nkey = []\nwindow_s = 60\n',
            "lambdas/workflows/x/workflow.toml: idempotency.key: ",
        ),
        (
            'events = ["media/uploaded"]\n[idempotency]\nkey = ["data.k"]\nwindow_s = 2592001\n',
            "lambdas/workflows/x/workflow.toml: idempotency.window_s: must be <= 2592000, got",
        ),
        (
            'events = ["media/uploaded"]\n[priority]\nkey = "data.tier"\n',
            "lambdas/workflows/x/workflow.toml: priority: needs throttle or concurrency",
        ),
        (
            'events = ["media/uploaded"]\n[throttle]\nlimit = 1\nperiod_s = 9\n'
            '[priority]\nkey = "data.tier"\nmax = 3\ndefault = 4\n',
            "lambdas/workflows/x/workflow.toml: priority: default: must be <= max (3), got 4",
        ),
        (
            'events = ["media/uploaded"]\n[throttle]\nlimit = 1\nperiod_s = 9\n'
            '[priority]\nkey = "data.tier"\nmax = 101\n',
            "lambdas/workflows/x/workflow.toml: priority.max: must be <= 100, got 101",
        ),
        (
            'events = ["media/uploaded"]\n[throttle]\nlimit = 1\nperiod_s = 9\n'
            "[debounce]\nquiet_s = 5\n",
            "lambdas/workflows/x/workflow.toml: debounce: cannot be combined with throttle",
        ),
        (
            'events = ["media/uploaded"]\n[debounce]\nquiet_s = 901\n',
            "lambdas/workflows/x/workflow.toml: debounce.quiet_s: must be <= 900, got 901",
        ),
        (
            'events = ["media/uploaded"]\n[debounce]\nquiet_s = 60\nmax_wait_s = 30\n',
            "lambdas/workflows/x/workflow.toml: debounce: max_wait_s: must be >= quiet_s (60)",
        ),
        (
            'events = ["media/uploaded"]\n[batch]\nsize = 0\nwindow_s = 5\n',
            "lambdas/workflows/x/workflow.toml: batch.size: must be >= 1, got 0",
        ),
        (
            'events = ["media/uploaded"]\n[batch]\nsize = 51\nwindow_s = 5\n',
            "lambdas/workflows/x/workflow.toml: batch.size: must be <= 50, got 51",
        ),
        (
            'events = ["media/uploaded"]\n[batch]\nsize = 5\nwindow_s = 901\n',
            "lambdas/workflows/x/workflow.toml: batch.window_s: must be <= 900, got 901",
        ),
        (
            'events = ["media/uploaded"]\n[batch]\nsize = 5\nwindow_s = 9\n'
            "[debounce]\nquiet_s = 5\n",
            "lambdas/workflows/x/workflow.toml: debounce: cannot be combined with throttle, "
            "rate_limit or batch",
        ),
        (
            'events = ["media/uploaded"]\n[batch]\nsize = 5\nwindow_s = 9\n'
            "[rate_limit]\nlimit = 5\nperiod_s = 9\n",
            "lambdas/workflows/x/workflow.toml: batch: cannot be combined with throttle or "
            "rate_limit",
        ),
        (
            'events = ["media/uploaded"]\n[batching]\nsize = 10\n',
            "lambdas/workflows/x/workflow.toml: batching: unknown setting",
        ),
    ],
)
def test_an_invalid_declaration_names_the_file_and_the_setting(tmp_path, text, message):
    with pytest.raises(DeclarationError) as err:
        load_one(tmp_path, text)
    assert str(err.value).startswith(message), str(err.value)


def test_a_missing_directory_of_workflows_is_named(tmp_path):
    with pytest.raises(DeclarationError, match="no such directory"):
        workflows.load(tmp_path / "nowhere")


def test_the_cli_finds_every_deployed_workflow_by_its_stack_output():
    outputs = {catalog.workflow_output(name): f"fn-{name}" for name in catalog.WORKFLOWS}
    outputs[catalog.JOBS_TABLE_OUTPUT] = "table"
    assert catalog.workflows_in_outputs(outputs) == {
        name: f"fn-{name}" for name in sorted(catalog.WORKFLOWS)
    }


def test_without_declarations_at_hand_an_event_is_known_when_it_is_a_known_event(monkeypatch):
    # `pip install .` outside a checkout: no declarations, no staged routes document
    monkeypatch.setattr(catalog, "ROUTES_KNOWN", False)
    assert catalog.is_known("webhook/requested")
    assert not catalog.is_known("billing/invoice.paid")
    monkeypatch.setattr(catalog, "ROUTES_KNOWN", True)
    assert catalog.is_known("webhook/requested")
    assert not catalog.is_known("billing/invoice.paid")
