"""DynamoDB on loopback with HTTP/1.1 keep-alive, for benchmarks: moto's backend (in this
process) behind a ThreadingHTTPServer that keeps connections open as DynamoDB's endpoint does
(moto's own server closes every connection, which would add a TCP connect per call to the
client's CPU). Serves the JSON protocol (X-Amz-Target) for the item calls; unsigned.

    .venv/bin/python bench/ddb_keepalive.py --port 8123
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def serve(port: int) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        lock = threading.Lock()  # one request at a time, as DynamoDB applies each atomically

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                operation = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = 200, {}
                try:
                    with lock:
                        answer = getattr(client, _SNAKE.sub("_", operation).lower())(**request)
                    answer.pop("ResponseMetadata", None)
                except ClientError as exc:
                    status = 400
                    answer = {
                        "__type": f"com.amazonaws.dynamodb.v20120810#{exc.response['Error']['Code']}",
                        "message": exc.response["Error"].get("Message", ""),
                        **({"Item": exc.response["Item"]} if "Item" in exc.response else {}),
                    }
                body = json.dumps(answer, default=_jsonable).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        print(f"DynamoDB (moto, keep-alive) on http://127.0.0.1:{port}", flush=True)
        server.serve_forever()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)
