"""Micro benchmark: TVM scan kernels against the PyTorch reference (hmm.inference.TorchScan).

    python -m bench.kernels --device cpu --states 8 16 64 128 256 --out results/bench/kernel.csv
    python -m bench.kernels --device cuda --states 64 128 256 512 --out results/bench/kernel_h100.csv

Times the block-form scans, for B streams of T = S + 1 tokens (defaults 16 and 32, the model's
windows), U transition blocks (default 32, edges pick one at random) and each n: ``forward``
(alpha), ``backward`` (beta) and ``gradient`` (log_partition_blocks + .backward(), i.e. forward
scan, backward scan and the PyTorch accumulation of the posterior marginals into d table,
d emit, d init).  Both backends run in the same process on the same random log-normalised
potentials; after warm-up each op is timed ``--repeats`` times (CUDA: synchronised before and
after) and the median and 10th / 90th percentiles are written, with speedup = torch median /
tvm median.  Each CSV row is appended and flushed as soon as it is measured (a job cut off
keeps its rows); a PNG next to the CSV plots time against n on log axes at the end.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
from pathlib import Path

import torch

from bench import save_plot
from hmm.inference import TorchScan, log_partition_blocks
from hmm.kernels import TVMScan, target_for
from pipeline.training.timing import time_ms

COLUMNS = ["device", "backend", "n", "B", "T", "U", "op", "ms_median", "ms_p10", "ms_p90", "speedup_vs_torch"]
OPS = ("forward", "backward", "gradient")


def potentials(B: int, T: int, n: int, U: int, g: torch.Generator, device: torch.device):
    """Random log-normalised init [B, n], table [U, n, n], index [B, T-1] int32, emit [B, T-1, n]."""
    init = torch.randn(B, n, generator=g).log_softmax(-1)
    table = torch.randn(U, n, n, generator=g).log_softmax(-1)
    index = torch.randint(0, U, (B, T - 1), generator=g, dtype=torch.int32)
    emit = torch.randn(B, T - 1, n, generator=g).log_softmax(-1)
    return tuple(x.to(device) for x in (init, table, index, emit))


def _op(name: str, scan, init, table, index, emit):
    if name == "forward":
        return lambda: scan.forward(init, table, index, emit)
    if name == "backward":
        return lambda: scan.backward(table, index, emit)

    def gradient():
        i, t, e = (x.detach().requires_grad_() for x in (init, table, emit))
        log_partition_blocks(i, t, index, e, scan=scan)[0].sum().backward()
    return gradient


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[round(q * 10) - 1] if len(xs) > 1 else xs[0]


def _append(out: Path | None, row: dict) -> None:
    """Append one CSV row and flush it to disk now."""
    if out is None:
        return
    with out.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        f.flush()
        os.fsync(f.fileno())


def run(device: str, states: list[int], kernels: str | Path, B: int = 16, T: int = 32, U: int = 32,
        warmup: int = 3, repeats: int = 10, seed: int = 0, out: Path | None = None) -> list[dict]:
    """Benchmark rows (see COLUMNS) for every n and op, torch then tvm; each row is appended
    to the CSV ``out`` (header written first, replacing the file) as soon as it is measured."""
    dev = torch.device(device)
    backends = {"torch": TorchScan, "tvm": TVMScan.load(kernels)}
    g = torch.Generator().manual_seed(seed)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writeheader()
    rows = []
    for n in states:
        pots = potentials(B, T, n, U, g, dev)
        for op in OPS:
            med = {}
            for backend, scan in backends.items():  # torch first: the speedup's baseline
                ts = time_ms(_op(op, scan, *pots), dev, warmup=warmup, repeats=repeats)
                med[backend] = statistics.median(ts)
                rows.append({"device": device, "backend": backend, "n": n, "B": B, "T": T, "U": U, "op": op,
                             "ms_median": round(med[backend], 4), "ms_p10": round(_quantile(ts, 0.1), 4),
                             "ms_p90": round(_quantile(ts, 0.9), 4),
                             "speedup_vs_torch": round(med["torch"] / med[backend], 3)})
                _append(out, rows[-1])
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
    ap.add_argument("-U", type=int, default=32, help="transition blocks in the table")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    kernels = args.kernels or f"build/kernels/{target_for(args.device)}"
    out = Path(args.out)
    rows = run(args.device, args.states, kernels, B=args.B, T=args.T, U=args.U, warmup=args.warmup,
               repeats=args.repeats, out=out)
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"CPU, {torch.get_num_threads()} torch threads, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}"
    title = f"HMM block scans, B={args.B}, T={args.T}, U={args.U}, float32 ({where}, torch {torch.__version__})"
    save_plot(lambda: plot(rows, out.with_suffix(".png"), title), out, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
