"""Wall-clock timing that waits for the GPU: the one place the pipeline and benchmarks read clocks."""
from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """``clock()`` = milliseconds since an arbitrary origin, after the device's queued work."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __call__(self) -> float:
        synchronize(self.device)
        return time.perf_counter() * 1e3


def time_ms(fn, device: torch.device | str, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Wall times in ms of ``repeats`` calls of ``fn`` after ``warmup`` calls, each synchronized."""
    clock = Clock(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)
