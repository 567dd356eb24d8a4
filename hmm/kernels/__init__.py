"""TVM kernels for the HMM forward/backward scans (see README.md in this folder).

``import hmm.kernels`` imports neither TVM nor the submodules; TVM is imported when a
kernel is first loaded.
"""
__all__ = ["KernelError", "TVMScan", "load_scan"]


def __getattr__(name: str):
    if name in __all__:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
