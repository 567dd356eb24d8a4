"""The node's environment record and kernel check (child processes of :mod:`pipeline.node`).

    python -m pipeline.node.check env --bundle B --device cuda --out env.json
    python -m pipeline.node.check check --bundle B --device cuda --out check.json \\
        --runs ptb/vlnhmm-16384 ptb/vlnhmm-32768

``env``: Python, host, torch, CUDA, cuDNN, the GPUs (name, capability, memory), the driver and
clocks (nvidia-smi, where present), the TVM runtime the bundle brings (version, file, runtime-only,
TVM's CUDA runtime loadable), the commit ($REPRO_COMMIT, set by the node from the bundle) and
which optional packages this Python has (by their metadata: nothing is imported for that).

``check``: the bundle's kernels (``kernels/cuda`` for ``--device cuda``, ``kernels/llvm`` for a
CPU rehearsal) against the float64 PyTorch reference:

    kernels           hmm.kernels.check for every n of the manifest: forward and backward into
                      outputs filled with NaN beforehand, gradients vs float64 autograd, NaN
                      propagation, and (CUDA) a launch on torch's current stream behind long GEMMs
    potentials        for each ``--runs`` model (e.g. 2^14 and 2^15 states with their Brown
                      clusters): the exact block potentials the model hands its scan on a
                      validation window after a carried one, in training (n = k') and evaluation
                      (n = k); TVM forward/backward (poisoned outputs) vs float64 PyTorch scans
    training step     the loss and every parameter gradient of one training step with the TVM
                      scan vs the PyTorch scan (same weights, same dropout draws); on a GPU also
                      ``host_syncs``, how often its forward and backward made the CPU wait (CUDA's
                      sync debug mode; a diagnostic, none expected, not part of the verdict)
    normalizer        (CUDA) which transition normalizer the runs will use: the fused Triton
                      kernels, or the torch tiles where their probe failed (hmm.normalizer)

Rows are written to ``--out`` as soon as each is measured.  The verdict (``verdict.backend``:
``tvm`` only if every row passed) picks the scan backend of the node's benchmarks and runs.
Exit status 0 iff the verdict is tvm.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from hmm.kernels import target_for
from pipeline.files import write_json

LOSS_TOLERANCE = 1e-5    # relative, one step's loss
GRAD_TOLERANCE = 1e-4    # ||g_tvm - g_torch|| / ||g_torch|| over all parameters
OPTIONAL = ("numpy", "triton", "pandas", "matplotlib", "pyyaml", "tqdm", "pytest", "snakemake", "apache-tvm")


def _write(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=1, default=str)


def _nvidia_smi() -> dict:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"nvidia_smi": "absent"}
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu"
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"nvidia_smi": f"failed: {err}"}
    gpus = [dict(zip(fields.split(","), (v.strip() for v in line.split(",")))) for line in out]
    return {"nvidia_smi": gpus, "driver": gpus[0].get("driver_version") if gpus else None}


def env_record(bundle: Path, device: str) -> dict:
    rec: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                 "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
                 "cpus": os.cpu_count(), "device": device,
                 "commit": os.environ.get("REPRO_COMMIT") or "unknown"}
    try:
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        rec["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    bundle_manifest = json.loads((bundle / "BUNDLE.json").read_text())
    rec["bundle"] = {k: bundle_manifest.get(k) for k in ("commit", "commit_label", "dirty", "created", "python", "target")}
    rec["torch"] = torch.__version__
    rec["cuda"] = torch.version.cuda
    rec["cuda_available"] = torch.cuda.is_available()
    rec["torch_dlpack_c_api"] = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")
    if torch.cuda.is_available():
        rec["cudnn"] = torch.backends.cudnn.version()
        rec["gpus"] = [{"name": torch.cuda.get_device_name(i),
                        "capability": "sm_%d%d" % torch.cuda.get_device_capability(i),
                        "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                       for i in range(torch.cuda.device_count())]
        rec["gpu"] = rec["gpus"][0]["name"]
    rec.update(_nvidia_smi())
    try:
        from hmm.kernels.runtime import _import_tvm

        # through the runtime's import: its environment first (with a torch lacking the C DLPack exchange API,
        # tvm_ffi would otherwise compile a C++ addon at import, for minutes)
        tvm = _import_tvm("cpu")
        import tvm_ffi
        import ml_dtypes

        rec["tvm"] = tvm.__version__
        rec["tvm_file"] = tvm.__file__
        rec["tvm_ffi"] = tvm_ffi.__version__
        rec["tvm_runtime_only"] = bool(getattr(tvm.base, "_RUNTIME_ONLY", False))
        rec["tvm_from_bundle"] = all(str(Path(m.__file__).resolve()).startswith(str(bundle.resolve()))
                                     for m in (tvm, tvm_ffi, ml_dtypes))
        rec["tvm_files"] = {m.__name__: m.__file__ for m in (tvm, tvm_ffi, ml_dtypes)}
        if device == "cuda":
            _import_tvm("cuda")
            rec["tvm_cuda_runtime"] = "loaded"
    except Exception as err:  # noqa: BLE001 - recorded; the check will fail on it too
        rec["tvm_error"] = f"{type(err).__name__}: {err}"
    optional = {}
    for dist in OPTIONAL:
        try:
            optional[dist] = md.version(dist)
        except md.PackageNotFoundError:
            optional[dist] = None
    rec["packages"] = optional
    return rec


class _Recorder:
    """A scan backend that records the block potentials it is given, then runs the PyTorch scan."""

    name = "torch"

    def __init__(self):
        self.calls = []

    def forward(self, init, table, index, emit, out=None):
        from hmm.inference import TorchScan

        self.calls.append(tuple(x.detach().clone() for x in (init, table, index, emit)))
        return TorchScan.forward(init, table, index, emit)

    def backward(self, table, index, emit, out=None):
        from hmm.inference import TorchScan

        return TorchScan.backward(table, index, emit)


@contextlib.contextmanager
def host_syncs(device: torch.device):
    """``with host_syncs(device) as count: ...``; ``count()`` is how many times the block made the CPU wait on the
    GPU (CUDA's sync debug mode, warnings only: a diagnostic of the step, none expected; None off a GPU, where
    tests/test_fast_step.py counts the host reads instead)."""
    if device.type != "cuda":
        yield lambda: None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.cuda.set_sync_debug_mode("warn")
        except Exception:  # noqa: BLE001 (a diagnostic: never a reason for the check to fail)
            yield lambda: None
            return
        try:
            yield lambda: sum("synchroniz" in str(w.message) for w in caught)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def model_rows(key: str, spec: dict, bundle: Path, device: torch.device, scan, emit_row) -> None:
    """Rows for one run's model: its real potentials (training, evaluation) and one training step."""
    from hmm.inference import TorchScan
    from hmm.kernels.check import TOLERANCE, rel_err
    from pipeline.config import Run
    from pipeline.data.corpus import Corpus, Windows
    from pipeline.training.models import build_model

    spec = copy.deepcopy(spec)
    spec["train"]["device"] = device.type
    spec["settings"]["backend"] = "torch"
    run = Run.from_dict(spec)
    s, cfg = run.settings, run.train
    data = bundle / "data" / run.dataset
    corpus = Corpus.load(data)
    clusters = data / "clusters" / f"brown-{s.num_clusters}.tsv" if s.constraint == "brown" else None
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    torch.manual_seed(cfg.seed)
    model = build_model(run, corpus, clusters).to(device)
    windows = Windows(corpus.splits["valid"], cfg.batch_size, cfg.bptt)
    (x0, m0), (x1, m1) = ((x.to(device), m.to(device)) for x, m in (windows.window(0), windows.window(1)))
    base = {"run": key, "states": s.num_states, "clusters": s.num_clusters}
    for training in (True, False):
        start = time.perf_counter()
        model.train(training)
        recorder = _Recorder()
        with torch.no_grad():
            model.scan = TorchScan
            _, carry = model(x0, m0, model.initial_state(x0.shape[0]))
            model.scan = recorder
            model(x1, m1, carry)
        init, table, index, emit = recorder.calls[-1]
        B, S, n = emit.shape
        ref_alpha = TorchScan.forward(init.double(), table.double(), index, emit.double())
        ref_beta = TorchScan.backward(table.double(), index, emit.double())
        poison = lambda: torch.full((B, S + 1, n), float("nan"), dtype=torch.float32, device=device)  # noqa: E731
        alpha = scan.forward(init, table, index, emit, out=poison())
        beta = scan.backward(table, index, emit, out=poison())
        err = max(rel_err(alpha, ref_alpha), rel_err(beta, ref_beta))
        emit_row({**base, "what": f"potentials ({'training' if training else 'evaluation'})", "n": n, "B": B,
                  "S": S, "U": table.shape[0], "max_rel_err": err, "ok": err <= TOLERANCE,
                  "seconds": round(time.perf_counter() - start, 3)})
    start = time.perf_counter()
    model.train()
    with torch.no_grad():
        model.scan = TorchScan
        _, carry = model(x0, m0, model.initial_state(x0.shape[0]))
    losses, grads = {}, {}
    for name, backend in (("torch", TorchScan), ("tvm", scan)):
        model.scan = backend
        torch.manual_seed(5)
        if hasattr(model, "generator"):
            model.generator.manual_seed(5)
        model.zero_grad(set_to_none=True)
        with host_syncs(device) as syncs:
            logp, _ = model(x1, m1, carry)
            loss = -logp.sum() / m1.sum()
            loss.backward()
        if name == "tvm":
            synced = syncs()
        losses[name] = loss.item()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()
    loss_rel = abs(losses["tvm"] - losses["torch"]) / max(abs(losses["torch"]), 1e-30)
    grad_rel = float((grads["tvm"] - grads["torch"]).norm() / grads["torch"].norm().clamp_min(1e-30))
    emit_row({**base, "what": "training step", "loss": losses, "loss_rel": loss_rel, "grad_rel": grad_rel,
              "host_syncs": synced,
              "ok": loss_rel <= LOSS_TOLERANCE and grad_rel <= GRAD_TOLERANCE,
              "seconds": round(time.perf_counter() - start, 3)})
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check(bundle: Path, device_name: str, out: Path, runs: list[str]) -> dict:
    from hmm.kernels import TVMScan
    from hmm.kernels import check as kcheck

    device = torch.device(device_name)
    kdir = bundle / "kernels" / target_for(device.type)
    start = time.perf_counter()
    report: dict = {"device": device_name, "torch": torch.__version__, "kernels_dir": str(kdir),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "tolerance": {"scans": kcheck.TOLERANCE, "loss": LOSS_TOLERANCE, "gradient": GRAD_TOLERANCE},
                    "kernels": None, "model": [], "errors": [], "verdict": None}
    _write(out, report)
    try:
        report["kernels"] = kcheck.run(kdir, device_name, None, out.with_name("check_kernels.json"))
    except (Exception, SystemExit) as err:  # noqa: BLE001 - recorded: the verdict is then torch
        report["errors"].append(f"kernel check: {type(err).__name__}: {err}")
        report["traceback"] = traceback.format_exc()
    if device.type == "cuda":  # the runs' transition normalizer per operand precision (hmm.normalizer's probe;
        from hmm import normalizer  # not part of the verdict: a run falls back to the torch tiles by itself)
        report["normalizer"] = {p: {"impl": normalizer.impl_for(device, precision=p),
                                    "triton": normalizer.triton_problem(device, p) or "passed its probe"}
                                for p in ("fp32", "tf32", "bf16")}
        for p, got in report["normalizer"].items():
            print(f"transition normalizer ({p}): {got['impl']} (triton: {got['triton']})", flush=True)
    _write(out, report)
    specs = {f"{s['dataset']}/{s['name']}": s for s in json.loads((bundle / "runs.json").read_text())}

    def emit_row(row: dict) -> None:
        report["model"].append(row)
        _write(out, report)
        extra = f"max_rel_err={row['max_rel_err']:.2e} n={row['n']}" if "max_rel_err" in row else \
            f"loss_rel={row['loss_rel']:.2e} grad_rel={row['grad_rel']:.2e}"
        print(f"{row['run']:24s} {row['what']:24s} {'ok' if row['ok'] else 'FAIL'} {extra}", flush=True)

    if report["kernels"] is not None:
        scan = TVMScan.load(kdir)
        for key in runs:
            if key not in specs or specs[key]["model"] != "vlnhmm":
                report["errors"].append(f"check run {key}: not a VLNHMM run of the bundle")
                continue
            try:
                model_rows(key, specs[key], bundle, device, scan, emit_row)
            except Exception as err:  # noqa: BLE001
                report["errors"].append(f"model check {key}: {type(err).__name__}: {err}")
                report["model"].append({"run": key, "what": "error", "ok": False,
                                        "error": f"{type(err).__name__}: {err}"})
                report.setdefault("tracebacks", []).append(traceback.format_exc())
    kernels_ok = bool(report["kernels"] and report["kernels"]["ok"] and report["kernels"]["rows"])
    model_ok = all(r["ok"] for r in report["model"])
    failed = [f"n={r['n']} {r['what']}" for r in (report["kernels"] or {}).get("rows", []) if r["ok"] is False]
    failed += [f"{r['run']} {r['what']}" for r in report["model"] if not r["ok"]]
    if kernels_ok and model_ok and not report["errors"]:
        rows = len(report["kernels"]["rows"]) + len(report["model"])
        verdict = {"backend": "tvm", "reason": f"all {rows} checks passed"}
    else:
        why = "; ".join(report["errors"][:3] + ([f"failed: {', '.join(failed[:6])}"] if failed else []))
        verdict = {"backend": "torch", "reason": why or "no kernel rows"}
    report["verdict"] = verdict
    report["seconds"] = round(time.perf_counter() - start, 1)
    _write(out, report)
    print(f"verdict: {verdict['backend']} ({verdict['reason']}) in {report['seconds']} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["env", "check"])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", nargs="*", default=[], help="check: VLNHMM runs whose model is checked")
    a = ap.parse_args(argv)
    if a.what == "env":
        rec = env_record(a.bundle, a.device)
        _write(a.out, rec)
        print(json.dumps({k: rec.get(k) for k in ("gpu", "driver", "torch", "cuda", "tvm", "tvm_runtime_only",
                                                   "tvm_from_bundle", "commit")}), flush=True)
        return 0
    report = check(a.bundle, a.device, a.out, a.runs)
    return 0 if report["verdict"]["backend"] == "tvm" else 1


if __name__ == "__main__":
    raise SystemExit(main())
