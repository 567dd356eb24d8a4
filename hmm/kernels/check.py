"""Check built kernels against the float64 PyTorch reference, on the machine that will run them.

    python -m hmm.kernels.check --kernels build/kernels/cuda --device cuda --out check.json
    python -m hmm.kernels.check --kernels build/kernels/llvm --device cpu --states 8 64 --out check.json

Needs only python3, torch, numpy and a TVM runtime (the runtime-only tree of
:mod:`hmm.kernels.pack_runtime` will do): nothing is compiled, so it runs on a GPU node without
a compiler.  For every n of the kernel directory's manifest (or ``--states``):

    forward      alpha of random block potentials (log-normalised, -inf entries, blocks shared
                 between edges, padding) against the float64 PyTorch scan (hmm.inference);
                 alpha is filled with NaN before the call, so an element the kernel does not
                 write shows up as an error
    backward     the same for beta
    gradient     d log Z / d (init, table, emit) of log_partition_blocks(scan=TVM) against
                 autograd through the float64 reference
    nan          a NaN in init must give NaN in exactly the outputs where the reference has NaN
    stream       (CUDA only) one forward launch on a non-default torch stream queued behind long
                 GEMMs and the copy of its input table: a kernel that ignored torch's current
                 stream would read the table before the copy lands (it is NaN until then)

Each check is one JSON row {n, what, max_rel_err, ok, seconds} (plus ``skipped``: why, for
checks that do not apply, with ok null); ``--out`` is rewritten after every row, so a job cut
off keeps what it measured.  Exit status 0 only if every check that ran is ok.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from hmm.inference import TorchScan, log_partition_blocks, log_partition_blocks_autograd

from .runtime import TVMScan

TOLERANCE = 1e-5   # the bound of tests/test_kernels.py: scans elementwise, gradients max-norm
SHAPE = (5, 9, 4)  # B, S, U of the random potentials


def random_blocks(B: int, S: int, n: int, U: int, seed: int = 0, device="cpu"):
    """init [B, n], table [U, n, n], index [B, S] int32, emit [B, S, n]: log-normalised, ~20%
    -inf table entries (row 0 of every block and init[:, 0] stay finite, so every state stays
    reachable and the float64 autograd reference has no NaN), row 0 padded from S // 2 on."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(B, n, generator=g).log_softmax(-1)
    init[torch.rand(B, n, generator=g) < 0.2] = -torch.inf
    init[:, 0] = 0.0
    table = torch.randn(U, n, n, generator=g).log_softmax(-1)
    table[(torch.rand(U, n, n, generator=g) < 0.2) & (torch.arange(n)[:, None] > 0)] = -torch.inf
    emit = torch.randn(B, S, n, generator=g).log_softmax(-1)
    index = torch.randint(0, U, (B, S), generator=g, dtype=torch.int32)
    if S >= 2:
        index[0, S // 2:] = -1
    return tuple(x.to(device) for x in (init, table, index, emit))


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Elementwise max |got - ref| / max(|ref|, 1) over finite ref entries; inf when the -inf or
    NaN patterns differ (an unwritten, poisoned element is NaN)."""
    got, ref = got.double().cpu(), ref.double().cpu()
    if not (torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isneginf(), ref.isneginf())):
        return float("inf")
    fin = torch.isfinite(ref)
    return ((got[fin] - ref[fin]).abs() / ref[fin].abs().clamp_min(1.0)).max().item() if fin.any() else 0.0


def max_norm_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| (gradients); inf if got has NaN."""
    got, ref = got.double().cpu(), ref.double().cpu()
    if got.isnan().any():
        return float("inf")
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() if ref.numel() else 0.0


def _reference(init, table, index, emit):
    """float64 alpha and beta of the PyTorch block scans."""
    init, table, emit = init.double(), table.double(), emit.double()
    return TorchScan.forward(init, table, index, emit), TorchScan.backward(table, index, emit)


def _poisoned(like: torch.Tensor, B: int, S: int, n: int) -> torch.Tensor:
    return torch.full((B, S + 1, n), float("nan"), dtype=torch.float32, device=like.device)


def check_forward(scan, n, device, seed):
    init, table, index, emit = random_blocks(*SHAPE[:2], n, SHAPE[2], seed, device)
    out = scan.forward(init, table, index, emit, out=_poisoned(init, *SHAPE[:2], n))
    return rel_err(out, _reference(init, table, index, emit)[0])


def check_backward(scan, n, device, seed):
    init, table, index, emit = random_blocks(*SHAPE[:2], n, SHAPE[2], seed, device)
    out = scan.backward(table, index, emit, out=_poisoned(init, *SHAPE[:2], n))
    return rel_err(out, _reference(init, table, index, emit)[1])


def _grads(fn, init, table, index, emit):
    leaves = [x.detach().clone().requires_grad_() for x in (init, table, emit)]
    fn(leaves[0], leaves[1], index, leaves[2]).sum().backward()
    return [x.grad for x in leaves]


def check_gradient(scan, n, device, seed):
    init, table, index, emit = random_blocks(*SHAPE[:2], n, SHAPE[2], seed, device)
    got = _grads(lambda i, t, x, e: log_partition_blocks(i, t, x, e, scan=scan)[0], init, table, index, emit)
    ref = _grads(log_partition_blocks_autograd, *(x.double() if x.is_floating_point() else x
                                                  for x in (init, table, index, emit)))
    return max(max_norm_err(g, r) for g, r in zip(got, ref))


def check_nan(scan, n, device, seed):
    init, table, index, emit = random_blocks(*SHAPE[:2], n, SHAPE[2], seed, device)
    init[1, n // 2] = float("nan")
    alpha_ref, beta_ref = _reference(init, table, index, emit)
    return max(rel_err(scan.forward(init, table, index, emit), alpha_ref),
               rel_err(scan.backward(table, index, emit), beta_ref))


def check_stream(scan, n, device, seed):
    """Forward on a side stream behind ~4 GEMMs of 8192^2 and the copy of its table."""
    B, S, U = 16, 31, 8
    init, table, index, emit = random_blocks(B, S, n, U, seed, device)
    ref = _reference(init, table, index, emit)[0]
    fwd, _ = scan._functions(n, device)  # the raw launch: TVMScan's own checks would sync
    late_table = torch.full_like(table, float("nan"))
    alpha = _poisoned(init, B, S, n)
    big = torch.randn(8192, 8192, device=device)
    torch.cuda.synchronize(device)
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        for _ in range(4):
            big = torch.mm(big, big).mul_(1.0 / 8192)
        late_table.copy_(table)
        TVMScan._call(fwd, device, init, late_table, index, emit, alpha)
    side.synchronize()
    return rel_err(alpha, ref)


CHECKS = {"forward": check_forward, "backward": check_backward, "gradient": check_gradient,
          "nan": check_nan, "stream": check_stream}


def _write(out: Path, report: dict) -> None:
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)


def run(kernels: str | Path, device: str, states: list[int] | None, out: str | Path, seed: int = 0) -> dict:
    """Run every check for every n, rewriting ``out`` after each row; returns the report."""
    dev = torch.device(device)
    scan = TVMScan.load(kernels)
    target = "cuda" if dev.type == "cuda" else "llvm"
    if target not in scan.dirs:
        raise SystemExit(f"{kernels} holds no {target} kernels (have {sorted(scan.dirs)})")
    states = states or scan.dirs[target].manifest["states"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"kernels": str(kernels), "device": str(dev), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
              "tolerance": TOLERANCE, "rows": [], "ok": True}
    for n in states:
        for what, fn in CHECKS.items():
            row = {"n": n, "what": what}
            if what == "stream" and dev.type != "cuda":
                row.update(max_rel_err=None, ok=None, seconds=0.0,
                           skipped="CUDA only: the CPU has no torch streams to hand to TVM")
            else:
                start = time.perf_counter()
                try:
                    err = fn(scan, n, dev, seed)
                    row.update(max_rel_err=err, ok=err <= TOLERANCE)
                except Exception as exc:  # noqa: BLE001 - a failing check is a row, not a crash
                    row.update(max_rel_err=None, ok=False, error=f"{type(exc).__name__}: {exc}")
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                row["seconds"] = round(time.perf_counter() - start, 4)
            report["rows"].append(row)
            report["ok"] = report["ok"] and row["ok"] is not False
            _write(out, report)
            status = "skip" if row["ok"] is None else ("ok" if row["ok"] else "FAIL")
            print(f"n={n:5d} {what:9s} {status:4s} max_rel_err={row['max_rel_err']}"
                  + (f" {row.get('error') or row.get('skipped')}" if "error" in row or "skipped" in row else ""),
                  flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", required=True, help="kernel directory (llvm or cuda) or a parent of both")
    ap.add_argument("--device", choices=["cpu", "cuda"], required=True)
    ap.add_argument("--states", type=int, nargs="+", default=None, help="n values (default: the manifest's)")
    ap.add_argument("--out", default="check.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    report = run(args.kernels, args.device, args.states, args.out, args.seed)
    print(f"{'all ok' if report['ok'] else 'FAILED'}: {len(report['rows'])} rows -> {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
