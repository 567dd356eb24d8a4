"""Progress bars and log lines for people: tqdm where installed, plain lines where not (a bare GPU node)."""
from __future__ import annotations

import contextlib
import sys
import time

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised on nodes without tqdm
    _tqdm = None


def say(line: str) -> None:
    """One log line, printed above any progress bar.

    The line and its newline go out in one write, flushed: two trainers that share a log (two snakemake jobs
    at once) then never splice each other's lines (``print`` and ``tqdm.write`` write the newline apart).
    """
    with _tqdm.external_write_mode() if _tqdm is not None else contextlib.nullcontext():
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Plain:
    """A progress 'bar' that prints a line at most every ``every`` seconds."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, every: float = 30.0):
        self.n, self.total, self.desc, self.unit, self.every = initial, total, desc, unit, every
        self.last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, initial: int = 0, desc: str = "", unit: str = "it"):
    """A progress bar with ``update(k)`` and ``close()``."""
    if _tqdm is None:
        return _Plain(total, initial, desc, unit)
    return _tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, disable=None,
                 mininterval=2.0)
