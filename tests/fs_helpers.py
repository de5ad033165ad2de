"""Filesystem helpers for tests that must prove a store was left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_hash(path: Path) -> str:
    """SHA-256 over every relative path and file content below `path`."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()
