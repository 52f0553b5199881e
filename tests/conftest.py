"""Test-wide set-up: the venv's Node 24 first on PATH (jsii), no AWS credentials, no real AWS."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
# Fake credentials and a region so no test can ever sign a request for a real account.
for var, value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_REGION": "eu-west-1",
}.items():
    os.environ[var] = value
os.environ.pop("AWS_PROFILE", None)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
