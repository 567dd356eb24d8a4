"""Wall-clock timing that waits for the GPU (the one place the pipeline and benchmarks read clocks),
and a counter of the host reads of device data that would make the CPU wait for the GPU."""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode


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


_aten = torch.ops.aten
# the ways of reading device data back to the host end in one of these operators (a Python value, an output
# sized by the data, or a comparison answered on the host); not seen on the CPU: ``.tolist()``, ``.numpy()`` and
# ``.cpu()`` of a CPU tensor dispatch nothing (the GPU device check runs its step under CUDA's sync debug mode)
HOST_READS = {_aten._local_scalar_dense.default, _aten.nonzero.default, _aten.is_nonzero.default,
              _aten.masked_select.default, _aten._unique2.default, _aten.unique_dim.default,
              _aten.unique_consecutive.default, _aten.repeat_interleave.Tensor, _aten.bincount.default,
              _aten.equal.default, _aten.allclose.default}
_INDEXING = {_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default}


class CountHostReads(TorchDispatchMode):
    """``with CountHostReads() as c: ...`` records in ``c.reads`` every aten call that needs a
    device value on the host (``.item()``, ``int(t)``, ``bool(t)``, ``nonzero``, ``unique``,
    boolean indexing, ...): on a GPU each one makes the CPU wait.  Counts the same on the CPU."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func in _INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None)
        if func in HOST_READS or bool_index:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))
