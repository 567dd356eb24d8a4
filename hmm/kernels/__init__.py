"""TVM kernels for the HMM forward/backward scans (see README.md in this folder).

``import hmm.kernels`` imports neither TVM nor the submodules; TVM is imported when a
kernel is first loaded.
"""
__all__ = ["CUDA_MAX_STATES", "KernelError", "TVMScan", "load_scan", "target_for"]

CUDA_MAX_STATES = 1024  # the CUDA scans use at least one thread per state (README.md in this folder)


def target_for(device: str) -> str:
    """The kernel target (and build/kernels/<target> directory) for a device or its type:
    ``llvm`` for ``cpu``, ``cuda`` for ``cuda`` / ``cuda:N`` / ``auto`` (a GPU run)."""
    kind = str(device).split(":")[0]
    if kind == "cpu":
        return "llvm"
    if kind in ("cuda", "auto"):
        return "cuda"
    raise ValueError(f"no TVM scan kernels for device {device!r} (cpu or cuda)")


def __getattr__(name: str):
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
