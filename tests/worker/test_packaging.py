"""The EB application bundle is exactly what CDK uploads, and it runs from a fresh venv.

The wheelhouse (`make wheelhouse`, part of `make setup-dev`) holds the worker's pinned
requirements, so this test installs them with --no-index: it never reaches PyPI.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from stacks.worker_env import worker_bundle
from tests.conftest import ROOT
from tests.worker.conftest import free_port, start_web, stop_web
from tests.worker.helpers import post

WHEELHOUSE = ROOT / "build" / "wheelhouse"


def test_the_bundle_has_what_eb_reads_at_its_root_and_both_packages():
    bundle = worker_bundle()
    for name in (
        "Procfile",
        "requirements.txt",
        ".ebextensions/scaling.config",
        ".platform/nginx/conf.d/sqsd.conf",
        "worker/app.py",
        "sluice/envelope.py",
    ):
        assert (bundle / name).is_file(), name
    assert not list(bundle.rglob("__pycache__"))
    assert not (bundle / "tests").exists()


@pytest.mark.slow
def test_the_bundle_installs_offline_and_its_web_process_answers_health(tmp_path: Path):
    # Given the bundle CDK uploads, and a fresh venv with only the bundle's requirements
    assert (WHEELHOUSE / ".done").is_file(), "run `make wheelhouse` (part of make setup-dev)"
    # (a copy, as EB unpacks the zip: running it must not write into the staged asset)
    bundle = tmp_path / "app"
    shutil.copytree(worker_bundle(), bundle)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(WHEELHOUSE),
            "-r",
            "requirements.txt",
        ],
        cwd=bundle,
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, (
        f"{pip.stderr}\n(run `make wheelhouse` after changing worker/requirements.txt)"
    )
    # When the Procfile's web command starts from the bundle root, as on EB (PATH has only the
    # fresh venv and the system: no PYTHONPATH, nothing from this checkout)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "SLUICE_ENV": "packaging",
        "SLUICE_EVENTS_DLQ_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/dlq",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    web = start_web(
        bundle, env, tmp_path / "web.log", procfile=bundle / "Procfile", python=str(python)
    )
    try:
        # Then it answers 200 on /health
        status, body = post(web.url, b"", method="GET", path="/health", headers={})
        assert (status, body) == (200, {"status": "ok", "env": "packaging"})
    finally:
        stop_web(web)
