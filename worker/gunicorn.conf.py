"""gunicorn settings of the `web` process (EB's nginx proxies sqsd's POSTs to $PORT, 8000)."""

import multiprocessing
import os

from sluice.settings import WebSettings

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
# Handling a message is mostly waiting on Lambda's Invoke: threads, as many as sqsd's
# HttpConnections (WebSettings.web_threads), in one process per core.
worker_class = os.environ.get("SLUICE_WEB_WORKER_CLASS", "gthread")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
threads = int(os.environ.get(WebSettings.variables()["web_threads"]) or 10)
# Longer than the longest Invoke budget, shorter than sqsd's InactivityTimeout.
timeout = int(os.environ.get("SLUICE_WEB_TIMEOUT_S", "45"))
graceful_timeout = 30
keepalive = 75
accesslog = None
errorlog = "-"
loglevel = "warning"
