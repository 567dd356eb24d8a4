"""A child process that does not outlive the process that started it.

Linux's prctl(PR_SET_PDEATHSIG) sends a signal to a process when its parent dies, by any death,
kill -9 included.  The GPU node's phases get SIGKILL (the node packs what they wrote); a training
job gets SIGTERM when its job's shell dies (snakemake gave the job up), so that it never writes a
result for a job that no longer exists.  Elsewhere (no prctl) this does nothing.
"""
from __future__ import annotations

import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Ask for ``sig`` when the parent dies; False where prctl is not available.  ``parent``: the pid
    the parent had (a child started from a parent already gone exits at once)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def parent_is(pid: int) -> bool:
    """Whether the process that started this one is still ``pid`` (else it died and we were adopted)."""
    return os.getppid() == pid
