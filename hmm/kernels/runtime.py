"""Load built scan kernels and run them on torch tensors (zero-copy through DLPack).

    scan = TVMScan.load("build/kernels/llvm")        # or load_scan("build/kernels")
    alpha = scan.forward(init, table, index, emit)   # init [B, n], table [U, n, n], index [B, S]
    beta = scan.backward(table, index, emit)         # int32 (-1 = padding), emit [B, S, n] -> [B, S+1, n]
    log_z, last = hmm.inference.log_partition_blocks(init, table, index, emit, scan=scan)

The library is picked by n and by the tensors' device: CPU tensors use an ``llvm`` kernel
directory, CUDA tensors a ``cuda`` one, and the library of the GPU's architecture (or else
the newest older one, whose PTX the driver JIT-compiles).  Nothing of TVM is imported before
the first load.  A llvm library is loaded by TVM-FFI with TVM's runtime library (``libtvm_runtime.so``:
the kernels' parallel launch) and without ``import tvm``, whose compiler's Python takes seconds to
import (a CPU run's start); a CUDA library through ``import tvm``.  Both work with the full TVM or the
runtime-only package of :mod:`hmm.kernels.pack_runtime`.

CUDA libraries carry CUDA source only, which TVM compiles when the library is loaded by
calling the global ``tvm_callback_cuda_compile(source)``.  This module overrides that
callback: it returns the fatbin that :mod:`hmm.kernels.build` compiled ahead of time, found
by the SHA-256 of the source, so a GPU node needs no compiler.  On a miss it falls back to the
callback TVM registered (NVRTC or nvcc), if any.

Every file handed to TVM (library, fatbin) is first checked against the SHA-256 in the manifest
(hashed once per process per path, mtime and size): a corrupt, truncated or swapped library
raises KernelError instead of crashing or computing wrong numbers.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import sys
import threading
import weakref
from pathlib import Path

import torch

from . import target_for
from .build import ABI, MANIFEST

BUILD_HINT = ("rebuild: `snakemake build/kernels/{target}/manifest.json --cores 2 --forcerun kernels_{target}` "
              "(or delete build/kernels/{target} and rerun)")
# kernels of a node bundle (a BUNDLE.json two folders up): the node has no snakemake, the bundle is made again
BUNDLE_HINT = "make the bundle again on the CPU machine (`./repro bundle --out .carry/bundle` with its other options)"
BUNDLE_ARCH_HINT = ("make the bundle again with kernels for {arch}: add {arch} to the `--arch` of the command it was "
                    "made with, e.g. `./repro bundle --out .carry/bundle --arch sm_90 {arch}`")
INT32_LIMIT = 2**31
_LOCK = threading.Lock()
_HASHES: dict[tuple[str, int, int], str] = {}   # (path, mtime_ns, size) -> sha256
_CHECKED_INDEX: dict = {}                        # "key": (weakref to index, (version, U)) last in range
_BINARIES: dict[str, bytes] = {}   # sha256 of CUDA source -> fatbin, for the load under way
_FALLBACK_COMPILE = []             # the callback TVM had registered before ours
_RUNTIME_LIBRARY = []              # libtvm_runtime.so, once loaded for llvm kernels without `import tvm`


class KernelError(RuntimeError):
    """A kernel library is missing or unusable; the message says which and how to build it."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per (path, mtime, size) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def _target_of(device: torch.device) -> str:
    try:
        return target_for(device.type)
    except ValueError as err:
        raise KernelError(str(err)) from None


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


def _runtime_environment() -> None:
    """Settings TVM's runtime reads when it starts (set before it is loaded; a user's own win)."""
    os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))
    # Idle TVM workers sleep at once instead of spinning: spinning starves the PyTorch ops
    # around each scan (measured on 2 cores: marginals at n=8 took 12 ms instead of 0.8 ms).
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    if not hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        # Older torch: tvm_ffi would JIT-compile a C++ DLPack addon at import (needs a compiler,
        # takes minutes); its pure-Python DLPack path is still zero-copy.
        os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")


def _load_llvm_module(path: Path):
    """A llvm kernel library loaded by TVM-FFI, without ``import tvm``.

    The library calls TVM's parallel launch and workspace functions, which the loader links from TVM's runtime
    library; that library is loaded first (global symbols), from where ``import tvm`` would load it: the folder
    ``$TVM_LIBRARY_PATH``, then the installed package's ``lib/``.  An imported tvm has loaded it already."""
    _runtime_environment()
    import tvm_ffi

    if "tvm" not in sys.modules and not _RUNTIME_LIBRARY:
        from importlib.util import find_spec

        from tvm_ffi.libinfo import load_lib_ctypes

        spec = find_spec("tvm")
        folders = [Path(os.environ["TVM_LIBRARY_PATH"])] if os.environ.get("TVM_LIBRARY_PATH") else []
        folders += [Path(p) / "lib" for p in (spec.submodule_search_locations or [])] if spec else []
        try:
            _RUNTIME_LIBRARY.append(load_lib_ctypes("tvm", "tvm_runtime", "RTLD_GLOBAL", extra_lib_paths=folders))
        except (OSError, RuntimeError) as err:
            raise KernelError(f"cannot load TVM's runtime library (libtvm_runtime.so; searched "
                              f"{', '.join(map(str, folders)) or 'no tvm package'}): {err}") from err
    return tvm_ffi.load_module(str(path))


def _import_tvm(target: str):
    """import tvm (lazily); for cuda also load TVM's CUDA runtime and install the callback."""
    _runtime_environment()
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
        self.in_bundle = (Path(path).parent.parent / "BUNDLE.json").is_file()
        try:
            self.manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise KernelError(f"no {MANIFEST} in {path}; build the kernels first") from None
        self.target = self.manifest["target"]
        if self.manifest.get("abi", 1) != ABI:
            raise KernelError(f"{path / MANIFEST} describes kernels of calling convention {self.manifest.get('abi', 1)}, "
                              f"this code needs {ABI} (built by another version of hmm.kernels); " + self.hint())
        self.loaded: dict[tuple[int, str | None], tuple] = {}
        self.fallbacks: set[tuple[str, str]] = set()  # (GPU arch, arch loaded instead), each said once

    def hint(self, arch: str | None = None) -> str:
        """What to do about a missing or bad kernel here: rebuild with snakemake, or, in a node bundle, make
        the bundle again (with kernels for ``arch`` where that GPU has none)."""
        if not self.in_bundle:
            return BUILD_HINT.format(target=self.target)
        return BUNDLE_ARCH_HINT.format(arch=arch) if arch else BUNDLE_HINT

    def pick(self, n: int, arch: str | None) -> dict:
        """The manifest entry for n states (and the best arch for a GPU of ``arch``)."""
        hint = self.hint()
        entries = [k for k in self.manifest["kernels"] if k["n"] == n]
        if not entries:
            raise KernelError(f"no {self.target} kernel for n={n} in {self.path} (built: n in "
                              f"{self.manifest['states']}; the pipeline builds the n of every configured run and of "
                              f"bench.kernel_states); {hint}")
        if arch is None:
            return entries[0]
        usable = [k for k in entries if _arch_key(k["arch"]) <= _arch_key(arch)]
        if not usable:
            fix = self.hint(arch) if self.in_bundle else f"add {arch} to kernels.cuda_archs in the config, then {hint}"
            raise KernelError(f"no cuda kernel for n={n} usable on {arch} in {self.path} (built: "
                              f"{self.manifest['archs']}); {fix}")
        entry = max(usable, key=lambda k: _arch_key(k["arch"]))
        if entry["arch"] != arch and (arch, entry["arch"]) not in self.fallbacks:
            self.fallbacks.add((arch, entry["arch"]))
            print(f"[hmm.kernels] this GPU is {arch}, {self.path} has no {arch} kernels (built: "
                  f"{', '.join(self.manifest['archs'])}): loading the {entry['arch']} ones, whose PTX the driver "
                  f"compiles for {arch} (a slower first load, no {arch}-specific code); for an exact match add {arch} "
                  f"to kernels.cuda_archs and rebuild", file=sys.stderr)
        return entry

    def functions(self, n: int, device: torch.device):
        """(forward, backward) packed functions for n states on ``device``."""
        return self.load(n, _cuda_arch(device) if self.target == "cuda" else None)

    def verify(self, name: str) -> None:
        """Raise KernelError unless file ``name`` has the SHA-256 the manifest records."""
        hint = self.hint()
        expected = self.manifest.get("files", {}).get(name, {}).get("sha256")
        if expected is None:
            raise KernelError(f"{self.path / MANIFEST} records no sha256 for {name}; {hint}")
        actual = file_sha256(self.path / name)
        if actual != expected:
            raise KernelError(f"kernel file {self.path / name} does not match {MANIFEST} (corrupt, "
                              f"truncated or from another build): expected sha256 {expected}, "
                              f"actual {actual}; {hint}")

    def load(self, n: int, arch: str | None = None):
        """(forward, backward) for n states (and a GPU of architecture ``arch``), cached."""
        key = (n, arch)
        if key not in self.loaded:
            entry = self.pick(n, arch)
            files = [entry[f] for f in ("library", "binary") if f in entry]
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise KernelError(f"missing {', '.join(missing)} in {self.path}; " + self.hint())
            for f in files:
                self.verify(f)
            if self.target == "llvm":
                with _LOCK:
                    module = _load_llvm_module(self.path / entry["library"])
            else:
                tvm = _import_tvm(self.target)
                with _LOCK:
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

    def _functions(self, n: int, device: torch.device):
        target = _target_of(device)
        if target not in self.dirs:
            raise KernelError(f"tensor on {device} but no {target} kernel directory was given "
                              f"(have: {sorted(self.dirs)}); " + BUILD_HINT.format(target=target))
        return self.dirs[target].functions(n, device)

    def prepare(self, n: int, device: str | torch.device = "cpu") -> None:
        """Load (and verify) the kernels for n states on ``device`` now; KernelError if absent."""
        self._functions(n, torch.device(device))

    @staticmethod
    def _call(fn, device: torch.device, *args: torch.Tensor) -> None:
        if device.type == "cuda":
            with torch.cuda.device(device):  # TVM launches on the current device's current stream
                fn(*args)
        else:
            fn(*args)

    def forward(self, init: torch.Tensor, table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """init [B, n], table [U, n, n], index [B, S] (int32/int64, -1 = padding), emit [B, S, n]
        -> alpha [B, S+1, n] (see hmm.inference.scan_forward_blocks); written into ``out`` if given."""
        table, index, emit = check_blocks(table, index, emit)
        B, S, n = emit.shape
        _check_tensor("init", init, (B, n), emit.device)
        alpha = _output(out, emit, (B, S + 1, n))
        fwd, _ = self._functions(n, emit.device)
        if B == 0 or S == 0:  # nothing to scan (and TVM rejects the strides torch gives empty tensors)
            return alpha.copy_(init.unsqueeze(1))
        self._call(fwd, emit.device, init.contiguous(), table, index, emit, alpha)
        return alpha

    def backward(self, table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """table [U, n, n], index [B, S], emit [B, S, n] -> beta [B, S+1, n]
        (see hmm.inference.scan_backward_blocks); written into ``out`` if given."""
        table, index, emit = check_blocks(table, index, emit)
        B, S, n = emit.shape
        beta = _output(out, emit, (B, S + 1, n))
        _, bwd = self._functions(n, emit.device)
        if B == 0 or S == 0:
            return beta.zero_()
        self._call(bwd, emit.device, table, index, emit, beta)
        return beta


def _check_tensor(name: str, x: torch.Tensor, shape: tuple, device: torch.device) -> None:
    if x.dtype != torch.float32 or tuple(x.shape) != tuple(shape) or x.device != device:
        raise ValueError(f"{name} must be float32 {list(shape)} on {device}, "
                         f"got {x.dtype} {list(x.shape)} on {x.device}")


def _output(out: torch.Tensor | None, like: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``out`` after checking it (float32, ``shape``, contiguous, like's device), or a new tensor."""
    if out is None:
        return like.new_empty(shape)
    _check_tensor("out", out, shape, like.device)
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    return out


def check_blocks(table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor):
    """Check the block-form potentials for the kernels; returns contiguous (table, index int32, emit).

    table [U, n, n] float32, index [B, S] int32 or int64 with values in [-1, U), emit [B, S, n]
    float32, all on one device, and B * (S+1) * n < 2^31 (the kernels index with int32).  A table of
    U * n * n >= 2^31 floats (evaluation at 2^16 states: M^2 = 16,384 blocks of 512 x 512) is replaced by
    the blocks the index uses (at most B * S), the index renumbered: the same scan.  An empty table (U = 0,
    every step padding) is replaced by one unused block.
    """
    if table.dim() != 3 or table.shape[1] != table.shape[2]:
        raise ValueError(f"table must be [U, n, n], got {list(table.shape)}")
    U, n, _ = table.shape
    if index.dim() != 2 or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"index must be int32 or int64 [B, S], got {index.dtype} {list(index.shape)}")
    B, S = index.shape
    _check_tensor("table", table, (U, n, n), table.device)
    _check_tensor("emit", emit, (B, S, n), table.device)
    if index.device != table.device:
        raise ValueError(f"index is on {index.device}, table on {table.device}")
    if B * (S + 1) * n >= INT32_LIMIT:
        raise ValueError(f"B*(S+1)*n = {B * (S + 1) * n} reaches 2^31; the kernels index with int32 "
                         "(split the batch)")
    _check_index_range(index, U)
    if U * n * n >= INT32_LIMIT:
        table, index = used_blocks(table, index)
        U = len(table)
        if U * n * n >= INT32_LIMIT:
            raise ValueError(f"the {U} blocks this batch uses hold U*n*n = {U * n * n} floats, reaching 2^31; "
                             "the kernels index with int32 (split the batch)")
    if U == 0:
        table = table.new_zeros(1, n, n)
    return table.contiguous(), index.to(torch.int32).contiguous(), emit.contiguous()


def used_blocks(table: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the blocks of ``table`` that ``index`` reads, in increasing order; ``index`` renumbered into them,
    -1 kept).  Reads the distinct indices back to the host (a sync on a GPU)."""
    used, renumbered = torch.unique(index.clamp(min=0), return_inverse=True)
    return table.index_select(0, used), torch.where(index < 0, -1, renumbered).to(index.dtype)


def _check_index_range(index: torch.Tensor, U: int) -> None:
    """Every index value must be in [-1, U): a kernel would read outside the table otherwise.

    On the CPU a ValueError names the range found.  On CUDA reading the range back would make
    the host wait for the GPU, so the check is queued on the device instead
    (``torch._assert_async``): a bad index fails the next synchronizing call with a device-side
    assertion.  The last index tensor checked (same object, unmodified since, same U) is not
    checked again: a forward and backward pair of log_partition checks once."""
    last = _CHECKED_INDEX.get("key")
    key = (index._version, U)
    if last is not None and last[0]() is index and last[1] == key:
        return
    if index.numel():
        lo, hi = torch.aminmax(index)
        if index.is_cuda:
            torch._assert_async((lo >= -1) & (hi < U), f"scan index values must be in [-1, U={U})")
        elif lo < -1 or hi >= U:
            raise ValueError(f"index values must be in [-1, U={U}), got min {int(lo)}, max {int(hi)}")
    _CHECKED_INDEX["key"] = (weakref.ref(index), key)


def load_scan(kernel_dir: str | Path, device: str | torch.device = "cpu") -> TVMScan:
    """A TVMScan for ``device`` from ``kernel_dir`` (a kernel directory or a parent of
    ``llvm/`` and ``cuda/``); fails now, not at first use, if that device's kernels are absent."""
    scan = TVMScan(kernel_dir)
    target = _target_of(torch.device(device))
    if target not in scan.dirs:
        raise KernelError(f"no {target} kernels under {kernel_dir}; " + BUILD_HINT.format(target=target))
    return scan
