"""Pack the smallest Python tree that loads and runs built kernels without a TVM install.

    python -m hmm.kernels.pack_runtime --out .carry/tvm-runtime --python-version 3.12
    python -m hmm.kernels.pack_runtime --out /tmp/rt --python-version 3.11 --check build/kernels/llvm

Contents of ``--out`` (put it on PYTHONPATH; the target machine brings Python, torch, numpy):

    tvm/        the installed TVM package minus its compiler (libtvm_compiler.so, so it imports
                in runtime-only mode), bundled sources and headers, and the compiler-only Python
                packages (relax, topi, s_tir, ...); it keeps libtvm_runtime.so and
                libtvm_runtime_cuda.so
    tvm_ffi/    the apache-tvm-ffi wheel for the target Python (C extension per Python version)
                minus headers, sources and test libraries
    ml_dtypes/  imported by tvm.runtime; wheel for the target Python
    PACKED.json versions, Python tag and size

Wheels come from PyPI through ``pip download`` when the target Python differs from the one
running this, else from the current environment.  ``--check KERNEL_DIR`` then runs a llvm kernel
against the PyTorch reference in a fresh process that sees only ``--out`` (plus this repository
and the environment's torch/numpy), and fails if tvm, tvm_ffi or ml_dtypes came from elsewhere.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (import name, distribution, paths inside the package to leave out)
PACKAGES = [
    ("tvm", "apache-tvm", ["lib/libtvm_compiler.so", "lib/libtvm_runtime_extra.so", "lib64", "3rdparty",
                           "src", "include", "web", "cmake", "relax", "topi", "s_tir", "testing", "exec"]),
    ("tvm_ffi", "apache-tvm-ffi", ["3rdparty", "include", "src", "cython", "stub", "testing",
                                   "share", "cmake", "CMakeLists.txt"]),
    ("ml_dtypes", "ml-dtypes", []),
]
PLATFORM = "manylinux_2_28_x86_64"


def _installed(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


def _from_wheel(dist: str, name: str, python_version: str, tmp: Path) -> Path:
    """Unpack package ``name`` from the wheel of ``dist`` (installed version) for that Python."""
    pin = f"{dist}=={md.version(dist)}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--platform", PLATFORM,
                    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "-d", str(tmp / dist), pin], check=True)
    (wheel,) = (tmp / dist).glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp / dist / "x", [m for m in zf.namelist() if m.startswith(f"{name}/")])
    return tmp / dist / "x" / name


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pack(out: str | Path, python_version: str) -> dict:
    """Write the runtime tree into ``out`` (replacing it); returns the PACKED.json content."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    same_python = python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    packed = {"python": python_version, "packages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dist, drop in PACKAGES:
            # tvm itself is pure Python plus version-independent libraries; the others are not.
            if same_python or name == "tvm":
                src = _installed(name)
            else:
                src = _from_wheel(dist, name, python_version, Path(tmp))
            shutil.copytree(src, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            for rel in drop:
                target = out / name / rel
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            packed["packages"][name] = {"version": md.version(dist), "bytes": _size(out / name),
                                        "source": "installed" if src == _installed(name) else "pypi wheel"}
    packed["total_bytes"] = _size(out)
    (out / "PACKED.json").write_text(json.dumps(packed, indent=1) + "\n")
    return packed


CHECK = """
import sys, torch
import tvm, tvm_ffi, ml_dtypes
from hmm.kernels import TVMScan
from hmm.inference import TorchScan
out = sys.argv[1]
for mod in (tvm, tvm_ffi, ml_dtypes):
    assert mod.__file__.startswith(out), f"{mod.__name__} imported from {mod.__file__}, not {out}"
assert tvm.base._RUNTIME_ONLY, "tvm did not start in runtime-only mode"
scan = TVMScan.load(sys.argv[2])
n = scan.dirs["llvm"].manifest["states"][-1]
init, table = torch.randn(4, n).log_softmax(-1), torch.randn(3, n, n).log_softmax(-1)
index, emit = torch.randint(-1, 3, (4, 7), dtype=torch.int32), torch.randn(4, 7, n).log_softmax(-1)
err = max((scan.forward(init, table, index, emit) - TorchScan.forward(init, table, index, emit)).abs().max().item(),
          (scan.backward(table, index, emit) - TorchScan.backward(table, index, emit)).abs().max().item())
assert err < 1e-4, err
print(f"runtime-only tvm {tvm.__version__} from {out}: n={n} forward/backward max abs err {err:.2e}")
"""


def check(out: str | Path, kernel_dir: str | Path) -> None:
    """Run an llvm kernel through the packed runtime in a fresh process (raises on failure)."""
    out = Path(out).resolve()
    env = dict(os.environ, PYTHONPATH=f"{out}{os.pathsep}{ROOT}")
    env.pop("TVM_USE_RUNTIME_LIB", None)  # runtime-only must follow from the missing compiler
    subprocess.run([sys.executable, "-c", CHECK, str(out), str(Path(kernel_dir).resolve())],
                   env=env, check=True, cwd=tempfile.gettempdir())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".carry/tvm-runtime")
    ap.add_argument("--python-version", default="3.12", help="Python of the machine that will use it")
    ap.add_argument("--check", metavar="KERNEL_DIR", help="llvm kernel directory to test the pack with "
                    "(needs --python-version of the running Python)")
    args = ap.parse_args(argv)
    packed = pack(args.out, args.python_version)
    for name, info in packed["packages"].items():
        print(f"{name:10s} {info['version']:14s} {info['bytes'] / 2**20:6.1f} MiB  ({info['source']})")
    print(f"total      {packed['total_bytes'] / 2**20:.1f} MiB for Python {args.python_version} -> {args.out}")
    if args.check:
        check(args.out, args.check)


if __name__ == "__main__":
    main()
