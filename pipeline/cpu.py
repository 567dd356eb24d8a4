"""Which CPU this is: its model name and its kind of native bf16 (for provenance, precision, benchmarks).

    kind()   "amx"          AMX-BF16 tiles (and AVX512-BF16): Intel Xeon Sapphire Rapids and later
             "avx512_bf16"  AVX512-BF16 dot products only: AMD EPYC Zen 4, Intel Cooper Lake
             "none"         no native bf16: bf16 arithmetic is emulated in fp32 and only slower

Read from the flags of /proc/cpuinfo (Linux); elsewhere torch's own view of the vector unit decides
between "avx512_bf16" and "none" conservatively (AMX is reported only where the flag is seen).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from pathlib import Path

KINDS = ("amx", "avx512_bf16", "none")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", {}) where it is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


def model_name() -> str:
    """e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8488C" (the platform's processor string elsewhere)."""
    return _cpuinfo()[0] or platform.processor() or "unknown CPU"


def kind() -> str:
    """The CPU's native bf16: "amx", "avx512_bf16" or "none" (see the module docstring)."""
    flags = _cpuinfo()[1]
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "none"


KIND_TEXT = {"amx": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "none": "no native bf16"}


def vector_unit() -> str:
    """The widest vector instructions the flags show: "AVX512", "AVX2" or "older than AVX2"."""
    flags = _cpuinfo()[1]
    return "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "older than AVX2"


def describe(threads: int | None = None) -> str:
    """One line for logs: "AMD EPYC (AVX512, AVX512-BF16), 2 threads (2 cores)"."""
    threads = threads if threads is not None else _torch_threads()
    plural = "" if threads == 1 else "s"
    return f"{model_name()} ({vector_unit()}, {KIND_TEXT[kind()]}), {threads} thread{plural} ({os.cpu_count()} cores)"


def record(threads: int | None = None) -> dict:
    """The CPU as metrics.json and benchmark rows record it (its model name alone does not tell an AMD EPYC
    Zen 3 from a Zen 4: the vector unit and the bf16 kind do)."""
    return {"cpu_model": model_name(), "vector_unit": vector_unit(), "bf16_kind": kind(),
            "threads": threads if threads is not None else _torch_threads(), "cores": os.cpu_count()}


# glibc's mallopt parameters (malloc.h) and the values set by keep_freed_memory
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30   # blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = 1 << 30   # free memory at the heap's top is returned above 1 GiB (both: C ints)


@functools.cache
def keep_freed_memory() -> bool:
    """Let the C allocator keep freed blocks of up to 1 GiB for reuse instead of unmapping them.

    A training step on a CPU allocates and frees the same large tensors every step (the FF's bf16
    logits alone are 164 MB).  By default glibc serves every block above its mmap threshold (at most
    32 MB) with a fresh mapping, and any block once the heap's top is trimmed, so each step touches new
    pages: one page fault per 4 KiB, measured per step (AMD EPYC Zen 4, 1 thread) 45,000 for the FF,
    4,000 for the LSTM and 6,500 for the VLNHMM-1,024, against 10-110 with this setting, 5-10 % of
    the step.  The process keeps its peak memory instead of returning it between steps.
    True where set (glibc), False elsewhere (other C libraries: nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
