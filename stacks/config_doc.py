"""Render every per-environment setting as the README's configuration table, and the declared
workflows as its workflow table (both kept true by a test).

Rows follow the models' fields in stacks/config.py, and each row's meaning is its field's
`description`: documenting a setting is writing its description.

The workflow table has one row per declaration (lambdas/workflows/<name>/workflow.toml).

`python -m stacks.config_doc --write README.md` (`make docs`) rewrites the tables between the
README's config-table and workflows-table markers; without arguments it prints them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sluice.workflows import Declaration
from stacks.config import ENVIRONMENTS, EnvConfig, FunctionConfig, section_of
from stacks.declarations import WORKFLOWS_ROOT, declared, step_names

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"
WORKFLOWS_BEGIN = "<!-- workflows-table:begin -->"
WORKFLOWS_END = "<!-- workflows-table:end -->"

# A cell under a section the environment leaves out (e.g. broker in dev).
_ABSENT = object()


def _fmt(value: Any) -> str:
    if value is _ABSENT:
        return "—"
    if isinstance(value, FunctionConfig):
        reserved = value.reserved_concurrency if value.reserved_concurrency else "none"
        return f"{value.memory_mb} MB / {value.timeout_s} s / {reserved}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "—"
    if value is None:
        return "off"
    return str(value)


def _rows(
    model: type[BaseModel], path: str, sections: list[Any]
) -> Iterator[tuple[str, str, list[str]]]:
    """The rows of `model`'s fields, in order; `sections` holds each environment's `model`."""
    for name, info in model.model_fields.items():
        setting = f"{path}{name}"
        if not info.description:
            raise ValueError(f"stacks/config.py: describe the setting {setting!r} (description=)")
        values = [_ABSENT if s is None or s is _ABSENT else getattr(s, name) for s in sections]
        section = section_of(info.annotation)
        if name == "steps":  # workflows.steps: one row per step handler, the sizing it gets
            for step in step_names(declared()):
                cells = [_fmt(workflows.step(step)) for workflows in sections]
                yield f"{setting}.{step}", info.description, cells
        elif section is None or section is FunctionConfig:  # one cell, even a function's sizing
            yield setting, info.description, [_fmt(v) for v in values]
        else:
            if info.default is None:  # an optional section: whether the environment has it
                yield setting, info.description, ["off" if v is None else "on" for v in values]
            yield from _rows(section, f"{setting}.", values)


def rows() -> list[tuple[str, str, list[str]]]:
    """(setting, description, value per environment) for every setting of any environment."""
    every = _rows(EnvConfig, "", list(ENVIRONMENTS.values()))
    return [row for row in every if row[0] != "name"]  # the names are the table's columns


def table() -> str:
    envs = list(ENVIRONMENTS)
    lines = [
        "| setting | meaning | " + " | ".join(envs) + " |",
        "|---|---|" + "---|" * len(envs),
    ]
    for setting, doc, cells in rows():
        lines.append(f"| `{setting}` | {doc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _concurrency(decl: Declaration) -> str:
    c = decl.concurrency
    if c is None:
        return "—"
    parts = [f"{c.limit} at once"] if c.limit else []
    if c.key:
        parts.append(f"{c.key_limit} per `{c.key}`")
    return ", ".join(parts) or "—"


def workflows_table(root: Path = WORKFLOWS_ROOT) -> str:
    """One row per declared workflow: what starts it and how it runs."""
    lines = [
        "| workflow | started by | steps | retries | timeout | concurrency | cancelled by "
        "| on failure | what |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in declared(root).items():
        events = ", ".join(f"`{e}`" for e in d.events)
        steps = ", ".join(f"`{s}`" for s in d.steps) or "—"
        cancels = ", ".join(dict.fromkeys(f"`{c.event}` on `{c.event_path}`" for c in d.cancel_on))
        lines.append(
            f"| `{name}` | {events} | {steps} | {d.retries} | {_duration(d.timeout_s)} | "
            f"{_concurrency(d)} | {cancels or '—'} | `{d.on_failure}` | {d.description} |"
        )
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, content: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + content + "\n" + text[stop:]


def write(path: Path) -> None:
    """Replace the tables between `path`'s markers with the current ones."""
    text = _replace(path.read_text(), BEGIN, END, table())
    path.write_text(_replace(text, WORKFLOWS_BEGIN, WORKFLOWS_END, workflows_table()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
    else:
        print(table())
        print()
        print(workflows_table())
