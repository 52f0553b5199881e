"""Render every per-environment setting as the README's configuration table (kept true by a test).

Rows follow the models' fields in stacks/config.py, and each row's meaning is its field's
`description`: documenting a setting is writing its description.

`python -m stacks.config_doc --write README.md` (`make docs`) rewrites the table between the
README's config-table markers; without arguments it prints the table.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sluice import catalog
from stacks.config import ENVIRONMENTS, EnvConfig, FunctionConfig, section_of

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"

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
            for step in sorted(catalog.TRANSCRIBE_STEPS):
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


def write(path: Path) -> None:
    """Replace the table between `path`'s config-table markers with the current one."""
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + table() + "\n" + text[end:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
    else:
        print(table())
