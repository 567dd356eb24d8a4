"""Micro benchmark: TVM scan kernels against the PyTorch reference (hmm.inference.TorchScan).

    python -m hmm.kernels.bench --device cpu --states 8 16 64 128 256 --out results/bench/kernel.csv
    python -m hmm.kernels.bench --device cuda --states 64 128 256 512 --out results/bench/kernel_h100.csv

Times, for B streams of T = S + 1 tokens (defaults 16 and 32, the model's windows) and each n:
``forward`` (alpha), ``backward`` (beta) and ``marginals`` (log_partition + .backward(), i.e.
forward scan, backward scan and the PyTorch assembly of the edge marginals).  Both backends
run in the same process on the same random log-normalised potentials; after warm-up each op
is timed ``--repeats`` times (CUDA: synchronised before and after) and the median and 10th /
90th percentiles are written, with speedup = torch median / tvm median.  A PNG next to the
CSV plots time against n on log axes.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch

from hmm.inference import TorchScan, log_partition

from .runtime import TVMScan

COLUMNS = ["device", "backend", "n", "B", "T", "op", "ms_median", "ms_p10", "ms_p90", "speedup_vs_torch"]
OPS = ("forward", "backward", "marginals")


def _op(name: str, scan, init: torch.Tensor, edges: torch.Tensor):
    if name == "forward":
        return lambda: scan.forward(init, edges)
    if name == "backward":
        return lambda: scan.backward(edges)

    def marginals():
        i, e = init.detach().requires_grad_(), edges.detach().requires_grad_()
        log_partition(i, e, scan=scan)[0].sum().backward()
    return marginals


def time_ms(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls in ms, after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[round(q * 10) - 1] if len(xs) > 1 else xs[0]


def run(device: str, states: list[int], kernels: str | Path, B: int = 16, T: int = 32,
        warmup: int = 3, repeats: int = 10, seed: int = 0) -> list[dict]:
    """Benchmark rows (see COLUMNS) for every n and op, torch and tvm."""
    dev = torch.device(device)
    backends = {"torch": TorchScan, "tvm": TVMScan.load(kernels)}
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in states:
        init = torch.randn(B, n, generator=g).log_softmax(-1).to(dev)
        edges = (torch.randn(B, T - 1, n, n, generator=g).log_softmax(-1)
                 + torch.randn(B, T - 1, 1, n, generator=g).log_softmax(-1)).to(dev)
        for op in OPS:
            med = {}
            for backend, scan in backends.items():
                ts = time_ms(_op(op, scan, init, edges), dev, warmup, repeats)
                med[backend] = statistics.median(ts)
                rows.append({"device": device, "backend": backend, "n": n, "B": B, "T": T, "op": op,
                             "ms_median": round(med[backend], 4), "ms_p10": round(_quantile(ts, 0.1), 4),
                             "ms_p90": round(_quantile(ts, 0.9), 4), "speedup_vs_torch": None})
            for row in rows[-2:]:
                row["speedup_vs_torch"] = round(med["torch"] / med[row["backend"]], 3)
            print(f"{device} n={n:4d} {op:9s} torch {med['torch']:9.3f} ms  tvm {med['tvm']:8.3f} ms  "
                  f"x{med['torch'] / med['tvm']:.1f}", flush=True)
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Time against n (log-log), one panel per op, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(OPS), figsize=(4 * len(OPS), 3.4), sharey=True)
    for ax, op in zip(axes, OPS):
        for backend, style in (("torch", "o--"), ("tvm", "s-")):
            pts = sorted((r["n"], r["ms_median"], r["ms_p10"], r["ms_p90"]) for r in rows
                         if r["op"] == op and r["backend"] == backend)
            ns, med, lo, hi = zip(*pts)
            ax.errorbar(ns, med, yerr=[[m - a for m, a in zip(med, lo)], [b - m for m, b in zip(med, hi)]],
                        fmt=style, capsize=2, label=backend)
        ax.set(xscale="log", yscale="log", xlabel="states per step n", title=op)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (median, p10-p90)")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--states", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--kernels", default=None,
                    help="kernel directory (default build/kernels/llvm or build/kernels/cuda)")
    ap.add_argument("--out", default="results/bench/kernel.csv")
    ap.add_argument("-B", type=int, default=16, help="streams")
    ap.add_argument("-T", type=int, default=32, help="tokens per window (S = T - 1 edges)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    kernels = args.kernels or f"build/kernels/{'llvm' if args.device == 'cpu' else 'cuda'}"
    rows = run(args.device, args.states, kernels, B=args.B, T=args.T, warmup=args.warmup, repeats=args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"CPU, {torch.get_num_threads()} torch threads, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}"
    title = f"HMM scans, B={args.B}, T={args.T}, float32 ({where}, torch {torch.__version__})"
    plot(rows, out.with_suffix(".png"), title)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
