"""Load built scan kernels and run them on torch tensors (zero-copy through DLPack).

    scan = TVMScan.load("build/kernels/llvm")        # or load_scan("build/kernels")
    alpha = scan.forward(init, edges)                # init [B, n], edges [B, S, n, n] float32
    beta = scan.backward(edges)                      # -> [B, S+1, n]
    log_z, last = hmm.inference.log_partition(init, edges, scan=scan)

The library is picked by n and by the tensors' device: CPU tensors use an ``llvm`` kernel
directory, CUDA tensors a ``cuda`` one, and the library of the GPU's architecture (or else
the newest older one, whose PTX the driver JIT-compiles).  ``import tvm`` happens on first
use, and works with the full TVM or the runtime-only package of :mod:`hmm.kernels.pack_runtime`.

CUDA libraries carry CUDA source only, which TVM compiles when the library is loaded by
calling the global ``tvm_callback_cuda_compile(source)``.  This module overrides that
callback: it returns the fatbin that :mod:`hmm.kernels.build` compiled ahead of time, found
by the SHA-256 of the source, so a GPU node needs no compiler.  On a miss it falls back to the
callback TVM registered (NVRTC or nvcc), if any.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import torch

from .build import MANIFEST

BUILD_HINT = "run `snakemake --cores 2 build/kernels/{target}/manifest.json`"
_LOCK = threading.Lock()
_BINARIES: dict[str, bytes] = {}   # sha256 of CUDA source -> fatbin, for the load under way
_FALLBACK_COMPILE = []             # the callback TVM had registered before ours


class KernelError(RuntimeError):
    """A kernel library is missing or unusable; the message says which and how to build it."""


def _target_of(device: torch.device) -> str:
    if device.type == "cpu":
        return "llvm"
    if device.type == "cuda":
        return "cuda"
    raise KernelError(f"no TVM scan kernels for device type {device.type!r} (cpu or cuda)")


def _preload_cudart() -> None:
    """Make libcudart.so.13 (needed by libtvm_runtime_cuda.so) loadable: the system's, or the
    one in torch's nvidia wheels, or the CUDA toolkit's."""
    candidates = ["libcudart.so.13"]
    for root in sys.path:
        candidates += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libcudart.so.13*")))
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates.append(os.path.join(cuda_home, "lib64", "libcudart.so.13"))
    for cand in candidates:
        try:
            ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
    raise KernelError("libcudart.so.13 not found (tried the loader path, nvidia/*/lib in sys.path "
                      "and $CUDA_HOME/lib64); TVM's CUDA runtime needs it")


def _import_tvm(target: str):
    """import tvm (lazily); for cuda also load TVM's CUDA runtime and install the callback."""
    os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))
    # Idle TVM workers sleep at once instead of spinning: spinning starves the PyTorch ops
    # around each scan (measured on 2 cores: marginals at n=8 took 12 ms instead of 0.8 ms).
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    if not hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        # Older torch: tvm_ffi would JIT-compile a C++ DLPack addon at import (needs a compiler,
        # takes minutes); its pure-Python DLPack path is still zero-copy.
        os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
    import tvm
    import tvm_ffi

    if target == "cuda" and "tvm_runtime_cuda" not in tvm.base._LOADED_LIBS:
        # Runtime-only TVM (and a full TVM whose import could not find libcudart) skip it.
        _preload_cudart()
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            tvm.base._LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
                mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as err:
            raise KernelError(f"cannot load TVM's CUDA runtime (libtvm_runtime_cuda.so): {err}") from err
    if target == "cuda" and not _FALLBACK_COMPILE:
        _FALLBACK_COMPILE.append(tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True))
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _cuda_compile, override=True)
    return tvm


def _cuda_compile(source: str) -> bytes:
    """TVM's load-time compile hook: the prebuilt fatbin for this exact source, else compile."""
    binary = _BINARIES.get(hashlib.sha256(source.encode()).hexdigest())
    if binary is not None:
        return binary
    if _FALLBACK_COMPILE[0] is None:
        raise KernelError("no prebuilt binary matches this CUDA source and no CUDA compiler "
                          "callback is registered; rebuild the kernels")
    return _FALLBACK_COMPILE[0](source)


def _cuda_arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _arch_key(arch: str) -> int:
    return int(arch.removeprefix("sm_").rstrip("af"))


class _KernelDir:
    """One kernel directory: its manifest and the libraries loaded from it so far."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise KernelError(f"no {MANIFEST} in {path}; build the kernels first") from None
        self.target = self.manifest["target"]
        self.loaded: dict[tuple[int, str | None], tuple] = {}

    def pick(self, n: int, arch: str | None) -> dict:
        """The manifest entry for n states (and the best arch for a GPU of ``arch``)."""
        hint = BUILD_HINT.format(target=self.target)
        entries = [k for k in self.manifest["kernels"] if k["n"] == n]
        if not entries:
            raise KernelError(f"no {self.target} kernel for n={n} in {self.path} (built: n in "
                              f"{self.manifest['states']}); add {n} to the kernel states and {hint}")
        if arch is None:
            return entries[0]
        usable = [k for k in entries if _arch_key(k["arch"]) <= _arch_key(arch)]
        if not usable:
            raise KernelError(f"no cuda kernel for n={n} usable on {arch} in {self.path} (built: "
                              f"{self.manifest['archs']}); add {arch} to the CUDA archs and {hint}")
        return max(usable, key=lambda k: _arch_key(k["arch"]))

    def functions(self, n: int, device: torch.device):
        """(forward, backward) packed functions for n states on ``device``."""
        return self.load(n, _cuda_arch(device) if self.target == "cuda" else None)

    def load(self, n: int, arch: str | None = None):
        """(forward, backward) for n states (and a GPU of architecture ``arch``), cached."""
        key = (n, arch)
        if key not in self.loaded:
            entry = self.pick(n, arch)
            missing = [entry[f] for f in ("library", "binary") if f in entry and not (self.path / entry[f]).is_file()]
            if missing:
                raise KernelError(f"missing {', '.join(missing)} in {self.path}; "
                                  + BUILD_HINT.format(target=self.target))
            tvm = _import_tvm(self.target)
            with _LOCK:
                if self.target == "cuda":
                    _BINARIES[entry["source_sha256"]] = (self.path / entry["binary"]).read_bytes()
                try:
                    module = tvm.runtime.load_module(str(self.path / entry["library"]))
                finally:
                    _BINARIES.clear()
            self.loaded[key] = (module["forward"], module["backward"], module)
        return self.loaded[key][:2]


class TVMScan:
    """Scan backend (see :class:`hmm.inference.TorchScan`) running the TVM kernels.

    ``kernel_dirs``: kernel directories made by :mod:`hmm.kernels.build` (their manifests say
    whether they hold llvm or cuda kernels), or a parent holding ``llvm/`` and/or ``cuda/``.
    """

    name = "tvm"

    def __init__(self, *kernel_dirs: str | Path):
        self.dirs: dict[str, _KernelDir] = {}
        for root in map(Path, kernel_dirs):
            found = [root] if (root / MANIFEST).is_file() else [
                root / t for t in ("llvm", "cuda") if (root / t / MANIFEST).is_file()]
            if not found:
                raise KernelError(f"no kernel manifest in {root} or its llvm/, cuda/ subfolders; "
                                  + BUILD_HINT.format(target="llvm"))
            for path in found:
                kd = _KernelDir(path)
                self.dirs[kd.target] = kd

    @classmethod
    def load(cls, *kernel_dirs: str | Path) -> "TVMScan":
        return cls(*kernel_dirs)

    def _functions(self, x: torch.Tensor):
        target = _target_of(x.device)
        if target not in self.dirs:
            raise KernelError(f"tensor on {x.device} but no {target} kernel directory was given "
                              f"(have: {sorted(self.dirs)}); " + BUILD_HINT.format(target=target))
        return self.dirs[target].functions(x.shape[-1], x.device)

    @staticmethod
    def _check(edges: torch.Tensor) -> None:
        if edges.dtype != torch.float32:
            raise TypeError(f"TVM scan kernels take float32, got {edges.dtype}")
        if edges.dim() != 4 or edges.shape[-1] != edges.shape[-2]:
            raise ValueError(f"edges must be [B, S, n, n], got {tuple(edges.shape)}")
        if edges.numel() >= 2**31:
            raise ValueError("edges has >= 2^31 entries; the kernels index with int32")

    def _call(self, fn, edges: torch.Tensor, *args: torch.Tensor) -> None:
        if edges.is_cuda:
            with torch.cuda.device(edges.device):  # TVM launches on the current device
                fn(*args)
        else:
            fn(*args)

    def forward(self, init: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """init [B, n], edges [B, S, n, n] -> alpha [B, S+1, n] (see hmm.inference.scan_forward)."""
        self._check(edges)
        B, S, n, _ = edges.shape
        if init.shape != (B, n) or init.dtype != edges.dtype or init.device != edges.device:
            raise ValueError(f"init must be float32 [B={B}, n={n}] on {edges.device}, "
                             f"got {init.dtype} {tuple(init.shape)} on {init.device}")
        fwd, _ = self._functions(edges)
        if B == 0 or S == 0:  # nothing to scan (and TVM rejects the strides torch gives empty tensors)
            return init.unsqueeze(1).clone()
        alpha = edges.new_empty(B, S + 1, n)
        self._call(fwd, edges, init.contiguous(), edges.contiguous(), alpha)
        return alpha

    def backward(self, edges: torch.Tensor) -> torch.Tensor:
        """edges [B, S, n, n] -> beta [B, S+1, n] (see hmm.inference.scan_backward)."""
        self._check(edges)
        B, S, n, _ = edges.shape
        _, bwd = self._functions(edges)
        if B == 0 or S == 0:
            return edges.new_zeros(B, S + 1, n)
        beta = edges.new_empty(B, S + 1, n)
        self._call(bwd, edges, edges.contiguous(), beta)
        return beta


def load_scan(kernel_dir: str | Path, device: str | torch.device = "cpu") -> TVMScan:
    """A TVMScan for ``device`` from ``kernel_dir`` (a kernel directory or a parent of
    ``llvm/`` and ``cuda/``); fails now, not at first use, if that device's kernels are absent."""
    scan = TVMScan(kernel_dir)
    target = _target_of(torch.device(device))
    if target not in scan.dirs:
        raise KernelError(f"no {target} kernels under {kernel_dir}; " + BUILD_HINT.format(target=target))
    return scan
