"""Stage deployment bundles (Lambda code, the EB worker zip) from the repo without Docker.

A bundle is a directory assembled from parts of the repository. Its path holds a hash of the
content, so the same sources always give the same directory, the same CDK asset hash and stable
snapshots, and concurrent synths never see a half-written bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "bundles"
# Never shipped: caches, tests, local state.
EXCLUDE_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests", ".venv", "node_modules"}
)
EXCLUDE_SUFFIXES = (".pyc", ".pyo")
# Bundle paths never shipped (none today: the CLI is a package of its own, sluice_cli).
EXCLUDE_PATHS: tuple[str, ...] = ()


def _files(src: Path) -> Iterable[tuple[str, Path]]:
    """(path relative to `src`, file) of every file under directory `src` that ships."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS)
        for name in sorted(filenames):
            if name.endswith(EXCLUDE_SUFFIXES):
                continue
            path = Path(dirpath) / name
            yield path.relative_to(src).as_posix(), path


def _excluded(target: str, paths: Iterable[str]) -> bool:
    """Whether bundle path `target` is one of `paths` (a file, or a directory and all below it)."""
    return any(target == p.rstrip("/") or target.startswith(p.rstrip("/") + "/") for p in paths)


def bundle_files(parts: Mapping[str, Path], *, exclude: Iterable[str] = ()) -> dict[str, Path]:
    """Destination path in the bundle -> source file, for `parts` (destination -> source).

    A directory part lands under its destination ("" or "." is the bundle root); a file part is
    copied to its destination path. Bundle paths in `exclude` (and EXCLUDE_PATHS) are not shipped.
    """
    skip = (*EXCLUDE_PATHS, *exclude)
    files: dict[str, Path] = {}
    for dest, src in parts.items():
        if not src.exists():
            raise FileNotFoundError(f"bundle part {dest!r}: {src} does not exist")
        prefix = "" if dest in ("", ".") else dest.strip("/")
        if src.is_file():
            if not prefix:
                raise ValueError(f"bundle: file part {src} needs its destination path")
            entries: Iterable[tuple[str, Path]] = [(prefix, src)]
        else:
            entries = ((f"{prefix}/{rel}" if prefix else rel, path) for rel, path in _files(src))
        for target, path in entries:
            if _excluded(target, skip):
                continue
            if target in files:
                raise ValueError(f"bundle: {target} comes from both {files[target]} and {path}")
            files[target] = path
    return files


def stage_bundle(
    name: str, parts: Mapping[str, Path], *, exclude: Iterable[str] = (), build_dir: Path = BUILD
) -> Path:
    """Assemble `parts` (less `exclude`, see `bundle_files`) into `build_dir/<name>-<content hash>`
    (reused when it exists)."""
    files = bundle_files(parts, exclude=exclude)
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(files[rel].read_bytes()).digest())
        digest.update(b"x" if os.access(files[rel], os.X_OK) else b"-")
    target = build_dir / f"{name}-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    build_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=build_dir))
    for rel, src in files.items():
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    try:
        tmp.rename(target)
    except OSError:  # another synth staged the same content first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
