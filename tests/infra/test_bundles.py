"""What each deployment bundle holds: every module once, nothing for development.

The development tools (devtools/), the tests, the benchmarks and the operator CLI (sluice/cli/)
never ship: no worker or Lambda code imports them, and shipping them would put code that is
never run on the instances and change asset hashes when they change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.bundling import ROOT
from stacks.worker_env import EB_ROOT_FILES, worker_bundle
from stacks.workflows import code_bundle

# Top-level folders that are development only, and the CLI inside the contracts package.
DEV_ONLY = ("devtools", "local", "tests", "bench")
CLI = "sluice/cli/"

# The application version EB receives, file by file. What EB reads sits at the root
# (stacks/worker_env.py: EB_ROOT_FILES); the `worker`, `adapters` and `sluice` packages are there
# once each. A file added to worker/, adapters/ or sluice/ (a module, data it loads) is added here
# in the same change.
WORKER_BUNDLE = [
    ".ebextensions/scaling.config",
    ".platform/confighooks/postdeploy/10_tasks_stop_timeout.sh",
    ".platform/hooks/postdeploy/10_tasks_stop_timeout.sh",
    ".platform/nginx/conf.d/sqsd.conf",
    "Procfile",
    "adapters/__init__.py",
    "adapters/errors.py",
    "adapters/flow.py",
    "adapters/jobs.py",
    "adapters/joins.py",
    "adapters/logs.py",
    "adapters/notifications.py",
    "adapters/rabbitmq_management.py",
    "adapters/s3.py",
    "adapters/slots.py",
    "adapters/transcribe.py",
    "cron.yaml",
    "requirements.txt",
    "sluice/__init__.py",
    "sluice/catalog.py",
    "sluice/envelope.py",
    "sluice/errors.py",
    "sluice/flowstate.py",
    "sluice/metrics.py",
    "sluice/naming.py",
    "sluice/producer.py",
    "sluice/run_control.py",
    "sluice/scheduling/__init__.py",
    "sluice/scheduling/names.py",
    "sluice/scheduling/oneoff.py",
    "sluice/scheduling/oneoff_records.py",
    "sluice/scheduling/overrides.py",
    "sluice/scheduling/registry.py",
    "sluice/scheduling/schedule.py",
    "sluice/settings.py",
    "sluice/steps.py",
    "sluice/workflows.json",
    "sluice/workflows.py",
    "worker/__init__.py",
    "worker/app.py",
    "worker/cancels.py",
    "worker/credentials.py",
    "worker/dispatch.py",
    "worker/flow.py",
    "worker/gunicorn.conf.py",
    "worker/heavy/__init__.py",
    "worker/heavy/common.py",
    "worker/heavy/embed.py",
    "worker/heavy/minilm-vocab.txt",
    "worker/heavy/transcode.py",
    "worker/invoke.py",
    "worker/observability.py",
    "worker/protection.py",
    "worker/routes.py",
    "worker/scheduler/__init__.py",
    "worker/scheduler/__main__.py",
    "worker/scheduler/broker_metrics.py",
    "worker/scheduler/connection.py",
    "worker/scheduler/control.py",
    "worker/scheduler/cron_http.py",
    "worker/scheduler/ledger.py",
    "worker/scheduler/oneoff.py",
    "worker/scheduler/overlap.py",
    "worker/scheduler/runner.py",
    "worker/scheduler/topology.py",
    "worker/tasks.py",
]

LAMBDAS = sorted(
    (kind, path.name)
    for kind in ("workflows", "steps")
    for path in (ROOT / "lambdas" / kind).iterdir()
    if (path / "handler.py").is_file()
)


def files(directory: Path) -> list[str]:
    """Every file under `directory` (dotfiles too), as its path relative to it."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def development_files(paths: list[str]) -> list[str]:
    return [p for p in paths if p.split("/", 1)[0] in DEV_ONLY or p.startswith(CLI)]


def test_the_worker_bundle_holds_exactly_these_files():
    assert files(worker_bundle()) == WORKER_BUNDLE


def test_the_worker_bundle_root_holds_what_eb_reads_and_the_three_packages_once():
    top = {p.split("/", 1)[0] for p in files(worker_bundle())}
    assert top == {*EB_ROOT_FILES, "worker", "adapters", "sluice"}
    # no module under two names (the root is not a copy of worker/)
    assert not [p for p in WORKER_BUNDLE if "/" not in p and p.endswith(".py")]


@pytest.mark.parametrize(("kind", "name"), LAMBDAS, ids=[n for _, n in LAMBDAS])
def test_a_lambda_bundle_holds_its_function_the_shared_runtime_adapters_and_contracts(kind, name):
    shipped = files(Path(code_bundle(kind, name).path))  # the directory CDK zips
    own = (f"lambdas/{kind}/{name}/", "lambdas/common/", "adapters/", "sluice/")
    inits = ("lambdas/__init__.py", f"lambdas/{kind}/__init__.py")
    assert [p for p in shipped if not (p.startswith(own) or p in inits)] == []
    assert f"lambdas/{kind}/{name}/handler.py" in shipped
    assert "adapters/jobs.py" in shipped
    # the declared routes (sluice.catalog reads them), and a workflow's own declaration
    assert "sluice/workflows.json" in shipped
    if kind == "workflows":
        assert f"lambdas/workflows/{name}/workflow.toml" in shipped
    assert development_files(shipped) == []


def test_no_asset_of_any_environment_ships_a_development_module(synth, env):
    # Every asset the cloud assembly uploads: the worker bundle, each function's code, the
    # dependency layer, CDK's own handlers
    assets = [d for d in synth(env).outdir.rglob("asset.*") if d.is_dir()]
    assert len(assets) > len(LAMBDAS)
    assert any((d / "Procfile").is_file() for d in assets)  # the worker bundle among them
    found = {d.name: development_files(files(d)) for d in assets}
    assert {name: dev for name, dev in found.items() if dev} == {}


def test_a_file_part_lands_at_its_path_and_exclusions_take_a_file_or_a_whole_folder(tmp_path):
    from stacks.bundling import bundle_files

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("Procfile", "pkg/a.py", "pkg/ab.py", "pkg/sub/b.py"):
        (tmp_path / name).write_text(name)
    parts = {"Procfile": tmp_path / "Procfile", "pkg": tmp_path / "pkg"}
    got = bundle_files(parts, exclude=["pkg/a", "pkg/sub"])
    assert sorted(got) == ["Procfile", "pkg/a.py", "pkg/ab.py"]
    assert sorted(bundle_files(parts, exclude=["pkg/a.py", "pkg/sub/"])) == [
        "Procfile",
        "pkg/ab.py",
    ]
