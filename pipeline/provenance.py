"""Where a result came from: commit, date, host (written into every metrics.json)."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
CPU_NAME = f"cpu ({os.cpu_count()} cores)"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=_REPO, check=True).stdout.strip()


def provenance() -> dict:
    try:
        commit = _git("rev-parse", "--short=10", "HEAD")
        if _git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version()}
