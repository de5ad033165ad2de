"""The code version of a run: the git commit of the code that runs, and whether its tracked files have
uncommitted changes. The loop records it at every start (the log's `code_version` attribute when it
creates the log, and a `run_start` row of metrics.jsonl for every session); `python -m data.inspect`
shows it."""

from __future__ import annotations

import subprocess
from pathlib import Path

CODE_DIR = Path(__file__).resolve().parents[2]  # the checkout (or installed tree) this code runs from


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_state(path: str | Path = CODE_DIR) -> dict[str, object]:
    """{"commit": 40-hex sha or "", "dirty": tracked files differ from the commit} of the repository at
    `path` (commit "" outside a git work tree or without git)."""
    p = Path(path)
    sha = _git(["rev-parse", "--verify", "HEAD"], p)
    if not sha:
        return {"commit": "", "dirty": False}
    status = _git(["status", "--porcelain", "--untracked-files=no"], p)
    return {"commit": sha, "dirty": bool(status)}


def code_version(path: str | Path = CODE_DIR) -> str:
    """"<sha>" or "<sha>+dirty" (uncommitted changes to tracked files), "" when unknown."""
    g = git_state(path)
    return "" if not g["commit"] else f"{g['commit']}{'+dirty' if g['dirty'] else ''}"
