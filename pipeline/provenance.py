"""Where a result came from: commit, date, host (written into every metrics.json).

The commit comes from git when this file lies in a git checkout; where git or the ``.git``
directory is absent (an offline GPU node that got a copy of the tree), from the environment
variable ``REPRO_COMMIT``, which :mod:`pipeline.node` sets to the commit recorded by
``./repro bundle`` (``<sha>`` or ``<sha>-dirty``); else ``unknown``.  ``commit_source`` says which.
"""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from pipeline import cpu

_REPO = Path(__file__).resolve().parent.parent
CPU_NAME = f"{cpu.model_name()} ({os.cpu_count()} cores, {cpu.vector_unit()}, native bf16: {cpu.kind()})"
COMMIT_ENV = "REPRO_COMMIT"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=_REPO, check=True).stdout.strip()


def git_commit() -> tuple[str, bool] | None:
    """(full sha, dirty) of this checkout, or None without git or outside a checkout of it.

    Dirty: a tracked file differs from the commit (untracked files are not counted)."""
    try:
        top, sha = _git("rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != _REPO:
            return None  # a copy of the tree inside some other repository
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    return sha, dirty


def commit_label(sha: str, dirty: bool) -> str:
    return sha[:10] + ("-dirty" if dirty else "")


def commit() -> tuple[str, str]:
    """(commit label, source): from git, else from $REPRO_COMMIT, else ("unknown", "none")."""
    found = git_commit()
    if found is not None:
        return commit_label(*found), "git"
    env = os.environ.get(COMMIT_ENV, "").strip()
    if env:
        return env, COMMIT_ENV
    return "unknown", "none"


def provenance() -> dict:
    label, source = commit()
    return {"commit": label, "commit_source": source,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version()}
