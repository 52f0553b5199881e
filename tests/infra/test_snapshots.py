"""Per-environment snapshots of every template, stable across runs and machines.

Asset hashes (and the bucket keys derived from them) change with any byte of Lambda or worker code,
so they are masked: a snapshot diff then shows only infrastructure changes.
Update after an intended change: `.venv/bin/pytest tests/infra/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import json
import re

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

_HASH = re.compile(r"\b[0-9a-f]{64}\b")
_ZIP = re.compile(r"\b[0-9a-f]{64}\.zip\b")
# A Lambda version's logical id ends in a hash of the function's code: mask it like the asset.
_VERSION = re.compile(r"(CurrentVersion[0-9A-F]{8})[0-9a-f]{32}\b")


def masked(template: dict) -> dict:
    text = json.dumps(template, sort_keys=True)
    text = _ZIP.sub("<asset>.zip", text)
    text = _HASH.sub("<asset-hash>", text)
    text = _VERSION.sub(r"\1<code-hash>", text)
    return json.loads(text)


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("stack", ["stateful", "stateless"])
def test_template_matches_snapshot(synth, env, stack, snapshot_json):
    template = getattr(synth(env), stack).to_json()
    assert masked(template) == snapshot_json


def test_masking_keeps_everything_but_asset_hashes():
    digest = "a" * 64
    version = "FnCurrentVersion18DCF9A9" + "c" * 32
    doc = {"S3Key": f"{digest}.zip", "Other": "b" * 63, "Hash": digest, "Ref": version}
    assert masked(doc) == {
        "S3Key": "<asset>.zip",
        "Other": "b" * 63,
        "Hash": "<asset-hash>",
        "Ref": "FnCurrentVersion18DCF9A9<code-hash>",
    }
