"""Micro benchmark of the transition row normalizer: PyTorch tiles against the fused Triton kernels.

    python -m bench.normalizer --R 16384 --C 16384 --h 256 --precision fp32 tf32 bf16 --out results/bench/normalizer_cuda.csv

Random P [R, h], Q [C, h]; for each precision and implementation: forward ms and forward +
backward ms (medians, CUDA-synchronized) and the largest |log Z| difference against the PyTorch
tiles on the same rounded operands.  Each CSV row is written as soon as it is measured.  On a
CPU the Triton rows need TRITON_INTERPRET=1 (slow; only to check the plumbing).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from hmm import normalizer
from hmm.precision import PRECISIONS
from pipeline.training.timing import median, time_ms

COLUMNS = ["impl", "precision", "R", "C", "h", "device", "fwd_ms", "fwd_bwd_ms", "max_abs_diff"]


def bench(R: int, C: int, h: int, precision: str, device: str, repeats: int = 5):
    """Yields one row per implementation (see COLUMNS)."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    p = (torch.randn(R, h, generator=g) / h ** 0.5).to(dev).requires_grad_()
    q = torch.randn(C, h, generator=g).to(dev).requires_grad_()
    ref = normalizer.row_logsumexp(p, q, precision, impl="torch").detach()
    for impl in ("torch", "triton"):
        def fwd():
            return normalizer.row_logsumexp(p, q, precision, impl=impl)

        def fwd_bwd():
            fwd().sum().backward()

        with torch.no_grad():
            fwd_ms = median(time_ms(fwd, dev, repeats=repeats))
            diff = (fwd() - ref).abs().max().item()
        yield dict(impl=impl, precision=precision, R=R, C=C, h=h, device=str(dev), fwd_ms=round(fwd_ms, 4),
                   fwd_bwd_ms=round(median(time_ms(fwd_bwd, dev, repeats=repeats)), 4), max_abs_diff=diff)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--R", type=int, nargs="+", default=[16384], help="rows (previous states)")
    ap.add_argument("--C", type=int, default=16384, help="columns (next states)")
    ap.add_argument("--h", type=int, default=256)
    ap.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="CSV file (default: standard output only)")
    args = ap.parse_args(argv)
    out = args.out.open("w", newline="") if args.out else None
    writers = [csv.DictWriter(s, fieldnames=COLUMNS) for s in [sys.stdout] + ([out] if out else [])]
    for w in writers:
        w.writeheader()
    for R in args.R:
        for prec in args.precision:
            for row in bench(R, args.C, args.h, prec, args.device, args.repeats):
                for w in writers:
                    w.writerow(row)
                if out:
                    out.flush()
    if out:
        out.close()


if __name__ == "__main__":
    main()
