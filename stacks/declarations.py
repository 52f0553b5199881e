"""The workflow declarations the stacks build from (sluice.workflows; docs/workflows.md).

Read from a directory of workflow packages (the repository's `lambdas/workflows/` unless a stack
is given another, as a test does) and validated at synth: an unknown event, a limit below 1 or a
timeout beyond what Lambda durable functions allow fails synth with the file and the setting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType

from sluice import catalog, workflows
from sluice.workflows import Declaration, step_names
from stacks.bundling import BUILD, ROOT

WORKFLOWS_ROOT = ROOT / "lambdas" / "workflows"
STEPS_ROOT = ROOT / "lambdas" / "steps"
# Where a bundle that ships `sluice` finds the routes (sluice.catalog.ROUTES_FILE).
ROUTES_PATH = "sluice/workflows.json"
__all__ = ["ROUTES_PATH", "STEPS_ROOT", "WORKFLOWS_ROOT", "declared", "routes_file", "step_names"]


@cache
def declared(root: Path = WORKFLOWS_ROOT) -> Mapping[str, Declaration]:
    """Every workflow declared under `root`, by name; DeclarationError if one is invalid."""
    return MappingProxyType(workflows.load(root, known_events=catalog.EVENTS))


def routes_file(declarations: Mapping[str, Declaration]) -> Path:
    """The routes document (`sluice.workflows.routes_document`) as a file, staged into every
    bundle that ships `sluice` at ROUTES_PATH."""
    text = workflows.routes_document(declarations)
    path = BUILD / "routes" / f"workflows-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{hashlib.sha256(str(id(text)).encode()).hexdigest()[:6]}")
        tmp.write_text(text)
        tmp.replace(path)
    return path
