"""Compile the scan kernels into a kernel directory (one shared library per n [and arch]).

    python -m hmm.kernels.build --target llvm --states 8 16 64 128 256 --out build/kernels/llvm
    python -m hmm.kernels.build --target cuda --arch sm_80 sm_90 --states 64 128 256 512 \\
        --out build/kernels/cuda

Layout of ``--out``:

    manifest.json                 what was built (read by hmm.kernels.runtime)
    scan_n{n}.so                  llvm: host code of forward and backward
    scan_n{n}_{arch}.so           cuda: host launchers + the CUDA source (TVM keeps source only)
    scan_n{n}_{arch}.cu           cuda: that source, for inspection and tests
    scan_n{n}_{arch}.fatbin       cuda: the source compiled by nvcc ahead of time (SASS for
                                  the arch + PTX for newer GPUs), served to TVM at load time

A CUDA build needs nvcc but no GPU.  Runs are deterministic apart from the manifest's
``built_at`` and ``build_seconds``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "manifest.json"
# The kernels' calling convention; a manifest of another one is refused at load (rebuild).
# 1: edges [B, S, n, n]; 2: block form (init, table, index, emit).
ABI = 2
NVCC_FLAGS = ["-O3", "--fatbin"]  # no --use_fast_math: keep expf/logf accurate


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def library_name(n: int, arch: str | None = None) -> str:
    """File name of the library for n states (and a CUDA arch)."""
    return f"scan_n{n}.so" if arch is None else f"scan_n{n}_{arch}.so"


def _compile(n: int, target):
    """Executable with functions "forward" and "backward" for n states."""
    import tvm

    from . import definition as d

    if target.kind.name == "cuda":
        funcs = {"forward": d.forward_cuda(n), "backward": d.backward_cuda(n)}
        # No TIR common-subexpression pass: nvcc does its own, and the kernel source stays a
        # plain function of (B, S) that tests can execute outside TVM.
        config = {"tirx.disable_cse_tir": True}
    else:
        funcs = {"forward": d.forward_llvm(n), "backward": d.backward_llvm(n)}
        config = {}
    with tvm.transform.PassContext(opt_level=3, config=config):
        return tvm.compile(tvm.IRModule(funcs), target=target)


def nvcc_fatbin(source: str, arch: str, path: Path) -> None:
    """Compile CUDA source to a fatbin holding sm_XY code and compute_XY PTX."""
    cc = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp, "kernel.cu")
        cu.write_text(source)
        cmd = ["nvcc", *NVCC_FLAGS, f"-gencode=arch=compute_{cc},code=[sm_{cc},compute_{cc}]",
               "-o", str(path), str(cu)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)


def _nvcc_version() -> str:
    out = subprocess.run(["nvcc", "--version"], check=True, capture_output=True, text=True).stdout
    return next(line for line in out.splitlines() if "release" in line).strip()


def build(target: str, states: list[int], out: str | Path, archs: list[str] = ("sm_90",),
          mcpu: str = "x86-64-v3", jobs: int | None = None, verbose: bool = True) -> dict:
    """Build kernels for every n in ``states`` into ``out``; returns the manifest (also written).

    target "llvm": libraries for the host CPU family ``mcpu``.  target "cuda": for each arch a
    library plus an nvcc fatbin (host code for generic x86-64).
    """
    import tvm
    import tvm_ffi

    from . import definition as d

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    states = sorted(set(states))
    kernels = []
    if target == "llvm":
        for n in states:
            lib = library_name(n)
            _compile(n, d.llvm_target(mcpu)).export_library(str(out / lib))
            kernels.append({"n": n, "library": lib})
        spec = {"kind": "llvm", "mcpu": mcpu}
    elif target == "cuda":
        if shutil.which("nvcc") is None:
            raise RuntimeError("nvcc not found on PATH: the CUDA build compiles device code ahead of time")
        host = d.llvm_target("x86-64")
        for arch in archs:
            for n in states:
                ex = _compile(n, tvm.target.Target(d.cuda_target(arch), host=host))
                source = ex.mod.imports[0].inspect_source("cuda")
                stem = f"scan_n{n}_{arch}"
                ex.export_library(str(out / f"{stem}.so"))
                (out / f"{stem}.cu").write_text(source)
                # The runtime hands TVM the fatbin whose key is the hash of the source stored in
                # the library; make sure the library really carries this exact text.
                if source.encode() not in (out / f"{stem}.so").read_bytes():
                    raise RuntimeError(f"{stem}.so does not embed the CUDA source that was hashed")
                kernels.append({"n": n, "arch": arch, "library": f"{stem}.so", "source": f"{stem}.cu",
                                "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
                                "binary": f"{stem}.fatbin"})
        with ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
            list(pool.map(lambda k: nvcc_fatbin((out / k["source"]).read_text(), k["arch"],
                                                out / k["binary"]), kernels))
        spec = {"kind": "cuda", "archs": list(archs), "host_mcpu": "x86-64",
                "nvcc": _nvcc_version(), "nvcc_flags": NVCC_FLAGS}
    else:
        raise ValueError(f"unknown target {target!r} (llvm or cuda)")

    files = sorted({f for k in kernels for key, f in k.items() if key in ("library", "source", "binary")})
    manifest = {
        "abi": ABI,
        "target": target,
        "target_spec": spec,
        "states": states,
        "archs": list(archs) if target == "cuda" else [],
        "kernels": kernels,
        "files": {f: {"sha256": sha256_file(out / f), "bytes": (out / f).stat().st_size} for f in files},
        "tvm_version": tvm.__version__,
        "tvm_ffi_version": tvm_ffi.__version__,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if verbose:
        total = sum(f["bytes"] for f in manifest["files"].values())
        print(f"built {len(kernels)} {target} kernel(s) n={states}"
              + (f" archs={list(archs)}" if target == "cuda" else f" mcpu={mcpu}")
              + f" -> {out} ({len(files)} files, {total / 1024:.0f} KiB) in {manifest['build_seconds']:.1f} s")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=["llvm", "cuda"], required=True)
    ap.add_argument("--states", type=int, nargs="+", required=True, help="n values (states per step)")
    ap.add_argument("--out", required=True, help="kernel directory")
    ap.add_argument("--arch", nargs="+", default=["sm_90"], help="CUDA archs, e.g. sm_80 sm_90")
    ap.add_argument("--mcpu", default="x86-64-v3", help="LLVM CPU for llvm builds (x86-64 = portable)")
    ap.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes")
    args = ap.parse_args(argv)
    build(args.target, args.states, args.out, archs=args.arch, mcpu=args.mcpu, jobs=args.jobs)


if __name__ == "__main__":
    main()
