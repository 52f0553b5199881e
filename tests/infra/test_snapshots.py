"""Snapshots a reviewer reads: prod's templates in full, and for every environment an inventory
(each resource's logical id and type, the parameters and the outputs), stable across runs and
machines. A diff of dev's or staging's inventory shows a resource added, removed or replaced there;
prod's full snapshot shows every property change. What differs between environments in properties
is asserted by the tests beside this one.

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


def inventory(template: dict) -> dict:
    """What the template holds: resources by logical id with their type, parameters, outputs."""
    return masked(
        {
            "Resources": {lid: r["Type"] for lid, r in sorted(template["Resources"].items())},
            "Parameters": sorted(template.get("Parameters", {})),
            "Outputs": sorted(template.get("Outputs", {})),
        }
    )


@pytest.mark.parametrize("stack", ["stateful", "stateless"])
def test_inventory_matches_snapshot(synth, env, stack, snapshot_json):
    assert inventory(getattr(synth(env), stack).to_json()) == snapshot_json


@pytest.mark.parametrize("stack", ["stateful", "stateless"])
def test_prod_template_matches_snapshot_in_full(synth, stack, snapshot_json):
    assert masked(getattr(synth("prod"), stack).to_json()) == snapshot_json


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
