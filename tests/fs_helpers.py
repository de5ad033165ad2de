"""Filesystem helpers for tests that must prove a store was left untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def tree_hash(path: Path) -> str:
    """SHA-256 over every relative path and file content below `path`."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def fresh_copy(src: Path, tmp_path: Path) -> Path:
    """A copy of the directory `src` at tmp_path / src.name, for a test to change (damage, resume) on its own."""
    out = tmp_path / src.name
    shutil.copytree(src, out)
    return out
