"""The test harness's start of the web process (tests/worker/conftest.py `start_web`), which the
worker tests and the chaos run (tests/chaos, which restarts it on its port) rely on."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.worker.conftest import start_web, stop_web, worker_env


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_a_web_process_is_not_reported_healthy_on_a_port_another_server_answers(
    tmp_path: Path,
) -> None:
    # Given another server answering 200 on /health at the web process's port (as when another
    # test's server took the port while the web process was down for a restart)
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    env = worker_env(
        port=port,
        lambda_url="http://127.0.0.1:9",
        moto_url="http://127.0.0.1:9",
        dlq_url="https://sqs.eu-west-1.amazonaws.com/123456789012/dlq",
    )
    try:
        # When the web process is started on that port
        # Then the start fails, naming the port, rather than taking the other server's answer
        # for the web process's (gunicorn cannot bind it)
        with pytest.raises(RuntimeError, match=f"port {port} is taken"):
            web = start_web(
                ROOT,
                env,
                tmp_path / "web.log",
                procfile=ROOT / "worker" / "Procfile",
                port_wait_s=1,
            )
            stop_web(web)
    finally:
        other.shutdown()
        other.server_close()
