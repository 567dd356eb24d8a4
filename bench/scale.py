"""Cost of a VLNHMM training step and evaluation batch against the number of states |Z|.

    python -m bench.scale --device cpu --states 256 512 1024 2048 4096 --num-clusters 16 16 16 32 64 \\
        --vocab 10000 --steps 3 --backend tvm --kernels build/kernels/llvm --out results/bench/scale_cpu.csv
    python -m bench.scale --device cuda --states 4096 8192 16384 32768 65536 131072 262144 \\
        --num-clusters 128 --vocab 10000 --backend tvm --kernels build/kernels/cuda --out results/bench/scale_cuda.csv

Setup per |Z| (M blocks, k = |Z| / M states per block, k' = (1 - dropout) k kept in training,
C' = M k' live states): a VLNHMM (hidden h, state dropout) on synthetic text with a realistic
vocabulary: V words in M random clusters of ~V/M words, Zipf word frequencies, ``<eos>`` about
every 22 tokens; B streams x T tokens per window, the carry passed between windows, AdamW and
gradient clipping at 5 as in :mod:`pipeline.train`.  Both paths run in the same process on the
same initial weights and windows:

    reference  dense log_softmax of the [C', C'] transition logits, PyTorch scan (``lean_transition=False``)
    fast       tiled normalizer and gathered [n, n] blocks (``lean_transition=True``), ``--backend`` scan;
               where no TVM kernel exists for n the fast row falls back to the PyTorch scan (column ``scan``)

Rows (``mode``): ``train`` one optimizer step; ``eval_build`` the one-off build of the cached
evaluation parameters (the dense [|Z|, |Z|] matrix, both paths); ``eval`` one batch with them.

Timing: ``ms`` is the median wall time of the whole step / build / batch over ``--steps`` runs
after ``--warmup`` (CUDA: synchronised before each clock read), with ``ms_forward``,
``ms_backward`` and ``ms_optimizer`` (clip + AdamW) read inside the same training steps.  The
split by part re-runs the model's own functions one part at a time on detached inputs (median
of ``--steps``, forward + backward with all-ones gradients in training, synchronised):

    mlp          P = trans_mlp(E_prev), Q = E_next and the start logits of the live states
    normalizer   reference log_softmax(P Q^T); fast row_logsumexp(P, Q) (+ the dense matrix at eval_build)
    emission     emission MLP, block logits, log_softmax and gather (VLNHMM._emission)
    potentials   transition blocks, carry prior and edge assembly (VLNHMM.potentials)
    dp_forward   forward scan;  dp_backward: backward scan + marginals (log_partition's backward)
    other        ms - sum of the parts and the optimizer: autograd and gather overheads, noise

Memory: ``peak_mib`` is the peak of tensor memory allocated during one more step above what
was allocated when it began (CUDA: max_memory_allocated; CPU: the allocations and frees
recorded by torch.profiler with profile_memory, summed in order; RSS-based numbers would mix
in the allocator's caching).  ``resident_mib`` is what stays allocated between steps: weights,
gradients and AdamW state (train) or weights and the cached distributions (eval).
``s_per_ptb_epoch`` = 929,589 / (B T) steps x ms (train rows).  ``speedup`` = reference ms /
this row's ms.  A configuration that fails (out of memory, say) is written with its error in
``status`` and the sweep goes on.

``--tf32`` and ``--bf16`` (CUDA autocast of the model's forward) change nothing on CPU.
A PNG next to the CSV plots training time by part, evaluation time and memory against |Z|.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import itertools
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from hmm import inference, normalizer
from hmm.config import HMMConfig
from hmm.model import FactoredTransition, HMMParams, VLNHMM

PTB_TRAIN_TOKENS = 929_589
PARTS = ("mlp", "normalizer", "emission", "potentials", "dp_forward", "dp_backward")
MODE_PARTS = {"train": ("mlp", "normalizer", "emission", "potentials", "dp"),
              "eval_build": ("mlp", "normalizer", "emission"),
              "eval": ("potentials", "dp")}
COLUMNS = ["device", "threads", "path", "mode", "scan", "precision", "states", "clusters", "k", "kept", "live_states",
           "vocab", "hidden", "B", "T", "ms", "ms_forward", "ms_backward", "ms_optimizer",
           *(f"ms_{p}" for p in PARTS), "ms_other", "peak_mib", "resident_mib", "s_per_ptb_epoch",
           "speedup", "status"]


def synthetic(V: int, M: int, B: int, T: int, count: int, seed: int):
    """(clusters [V], eos id, ``count`` windows (x [B, T], mask [B, T])) of Zipf-distributed words."""
    rng = np.random.default_rng(seed)
    clusters = rng.permutation(V) % M
    freq = 1.0 / np.arange(1, V + 1)
    word_of_rank = rng.permutation(V)
    eos = V - 1
    windows = []
    for _ in range(count):
        x = word_of_rank[rng.choice(V, size=(B, T), p=freq / freq.sum())]
        x[rng.random((B, T)) < 1 / 22] = eos
        windows.append((torch.as_tensor(x), torch.ones(B, T, dtype=torch.bool)))
    return clusters, eos, windows


class Clock:
    """Milliseconds, synchronising the GPU first."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter() * 1e3


def peak_mib(fn, device: torch.device) -> float:
    """Peak tensor memory allocated while fn() runs, above what was allocated when it began."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0)) / 2**20


def mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) / 2**20


def train_step(model, opt, batch, carry, clock, autocast):
    """One step as pipeline.train takes it: (carry, (ms forward, ms backward, ms clip + AdamW))."""
    x, mask = batch
    t0 = clock()
    with autocast():
        logp, carry = model(x, mask, carry)
    loss = -logp.sum() / mask.sum()
    t1 = clock()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = clock()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return carry, (t1 - t0, t2 - t1, clock() - t2)


def eval_batch(model, batch, carry, autocast):
    x, mask = batch
    with torch.no_grad(), autocast():
        return model(x, mask, carry)[1]


def detached(p: HMMParams, grad: bool) -> HMMParams:
    """p with every distribution tensor detached (a leaf requiring grad if ``grad``)."""
    def leaf(t):
        return t.detach().requires_grad_(grad)
    t = p.transition
    if isinstance(t, FactoredTransition):
        t = dataclasses.replace(t, prev=leaf(t.prev), next=leaf(t.next), log_norm=leaf(t.log_norm))
    else:
        t = dataclasses.replace(t, log_probs=leaf(t.log_probs))
    return dataclasses.replace(p, log_start=leaf(p.log_start), log_emit=leaf(p.log_emit), transition=t)


def normalizer_part(p: torch.Tensor, q: torch.Tensor, lean: bool, training: bool) -> torch.Tensor:
    """What the model makes of the factors P, Q: log_softmax(P Q^T), log Z, or (eval) log A."""
    if not lean:
        return (p @ q.T).log_softmax(dim=-1)
    log_z = normalizer.row_logsumexp(p, q)
    return log_z if training else FactoredTransition(p, q, log_z, None).dense()


def part_ms(model, mode: str, batch, carry, clock, repeats: int, autocast) -> dict[str, float]:
    """Median ms of each part of ``mode`` run alone (see the module docstring)."""
    training = mode == "train"
    x, mask = batch
    reset = model.cfg.eos_reset == "always" or (model.cfg.eos_reset == "train" and training)
    with torch.no_grad(), autocast():
        p = model.params_for(False) if mode == "eval" else model.build(training)
        pq = [model.param.transition_prev(p.live.states), model.param.transition_next(p.live.states)]
        init, edges = model.potentials(p, x, mask, carry, reset) if mode != "eval_build" else (None, None)
    live, param = p.live, model.param
    P, Q = (t.detach().requires_grad_(training) for t in pq)
    p = detached(p, training)
    init, edges = (t.detach().requires_grad_(training) if t is not None else None for t in (init, edges))
    fns = {
        "mlp": lambda: [param.transition_prev(live.states), param.transition_next(live.states),
                        param.start_logits(live.states)],
        "normalizer": lambda: [normalizer_part(P, Q, model.lean_transition, training)],
        "emission": lambda: [model._emission(live)],
        "potentials": lambda: list(model.potentials(p, x, mask, carry, reset)),
        "dp": lambda: [inference.log_partition(init, edges, model.scan)[0]],
    }

    def once(fn):
        grad = torch.enable_grad() if training else torch.no_grad()
        with grad, autocast():
            t0 = clock()
            outs = fn()
            t1 = clock()
        if training:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        t2 = clock()
        model.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1

    out = {}
    for name in MODE_PARTS[mode]:
        once(fns[name])
        fwd, bwd = zip(*(once(fns[name]) for _ in range(repeats)))
        if name == "dp":
            out["dp_forward"] = statistics.median(fwd)
            out["dp_backward"] = statistics.median(bwd) if training else None
        else:
            out[name] = statistics.median(a + b for a, b in zip(fwd, bwd))
    return out


def attempt(row: dict, fn) -> None:
    """row.update(fn()); on failure (out of memory, say) the error goes into row['status']."""
    try:
        row.update(fn())
    except Exception as err:  # noqa: BLE001 -- a sweep records a failed configuration and goes on
        traceback.print_exc(file=sys.stderr)
        row["status"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_path(path: str, cfg: HMMConfig, data, args, scans, device, autocast) -> list[dict]:
    """Rows (train, eval_build, eval) of one path for one configuration."""
    clusters, eos, windows = data
    windows = itertools.cycle([(x.to(device), m.to(device)) for x, m in windows])
    clock = Clock(device)
    torch.manual_seed(args.seed)
    model = VLNHMM(cfg, args.vocab, clusters, eos, seed=args.seed, lean_transition=path == "fast").to(device)
    carry = {}  # mode -> the carry after that mode's timed steps, for its split by part

    def train():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        c, times = None, []
        for _ in range(args.warmup + args.steps):
            c, t = train_step(model, opt, next(windows), c, clock, autocast)
            times.append(t)
        carry["train"] = c
        fwd, bwd, opt_ms = (statistics.median(col) for col in zip(*times[args.warmup:]))
        ms = statistics.median(sum(t) for t in times[args.warmup:])
        state = [p.grad for p in model.parameters()] + [v for st in opt.state.values() for v in st.values()]
        return {"ms": ms, "ms_forward": fwd, "ms_backward": bwd, "ms_optimizer": opt_ms,
                "resident_mib": mib(list(model.parameters()) + state),
                "s_per_ptb_epoch": PTB_TRAIN_TOKENS / (args.batch * args.bptt) * ms / 1e3,
                "peak_mib": peak_mib(lambda: train_step(model, opt, next(windows), c, clock, autocast), device)}

    def eval_build():
        model.eval()
        with torch.no_grad(), autocast():
            times = []
            for _ in range(args.warmup + args.steps):
                t0 = clock()
                model.build(False)
                times.append(clock() - t0)
            return {"ms": statistics.median(times[args.warmup:]),
                    "peak_mib": peak_mib(lambda: model.build(False), device)}

    def evaluate():
        model.eval()
        c, times = None, []
        for _ in range(args.warmup + args.steps):  # the first call builds the cache
            t0 = clock()
            c = eval_batch(model, next(windows), c, autocast)
            times.append(clock() - t0)
        carry["eval"] = c
        p = model.params_for(False)
        return {"ms": statistics.median(times[args.warmup:]),
                "resident_mib": mib(list(model.parameters()) + [p.log_start, p.log_trans, p.log_emit]),
                "peak_mib": peak_mib(lambda: eval_batch(model, next(windows), c, autocast), device)}

    rows = []
    for mode, measure, n in (("train", train, cfg.kept_per_block), ("eval_build", eval_build, None),
                             ("eval", evaluate, cfg.states_per_block)):
        model.scan, scan = scans(n) if path == "fast" and n else (inference.TorchScan, "torch" if n else "-")
        row = {"path": path, "mode": mode, "scan": scan, "status": "ok"}
        attempt(row, measure)
        if row["status"] == "ok":
            attempt(row, lambda: {f"ms_{k}": v for k, v in part_ms(
                model, mode, next(windows), carry.get(mode), clock, args.steps, autocast).items()})
        rows.append(row)
    return rows


def make_scans(backend: str, kernels: Path, device: torch.device):
    """n -> (scan, name): the TVM scan where a kernel for n loads, else the PyTorch one."""
    if backend == "torch":
        return lambda n: (inference.TorchScan, "torch")
    from hmm.kernels import KernelError, TVMScan

    tvm = TVMScan.load(kernels)

    def pick(n):
        try:
            tvm.prepare(n, device)
            return tvm, "tvm"
        except KernelError as err:
            print(f"no TVM kernel for n={n} ({str(err).splitlines()[0]}): PyTorch scan", file=sys.stderr)
            return inference.TorchScan, f"torch (no tvm n={n})"
    return pick


def run(args) -> list[dict]:
    device = torch.device(args.device)
    normalizer.TILE = args.tile
    if args.threads:
        torch.set_num_threads(args.threads)  # before TVM loads: its pool takes torch's thread count
    on_cuda = device.type == "cuda"
    if not on_cuda and (args.tf32 or args.bf16):
        print("--tf32/--bf16 are CUDA options: no effect on CPU", file=sys.stderr)
    if on_cuda and args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    precision = "bf16" if on_cuda and args.bf16 else "tf32" if on_cuda and args.tf32 else "fp32"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    clusters = args.num_clusters * len(args.states) if len(args.num_clusters) == 1 else args.num_clusters
    if len(clusters) != len(args.states):
        raise SystemExit("--num-clusters takes one value or one per --states value")
    scans = make_scans(args.backend, args.kernels, device)
    rows = []
    for states, M in zip(args.states, clusters):
        cfg = HMMConfig(num_states=states, num_clusters=M, hidden=args.hidden, state_dropout=args.dropout)
        data = synthetic(args.vocab, M, args.batch, args.bptt, 4, args.seed)
        common = {"device": args.device, "threads": torch.get_num_threads(), "precision": precision, "states": states, "clusters": M,
                  "k": cfg.states_per_block, "kept": cfg.kept_per_block, "vocab": args.vocab,
                  "hidden": args.hidden, "B": args.batch, "T": args.bptt}
        found = {}
        for path in ("reference", "fast"):
            for row in bench_path(path, cfg, data, args, scans, device, autocast):
                row.update(common, live_states=M * (cfg.kept_per_block if row["mode"] == "train" else cfg.states_per_block))
                parts = [row.get(f"ms_{p}") for p in (*PARTS, "optimizer")]
                if row.get("ms") is not None and row["mode"] == "train":
                    row["ms_other"] = row["ms"] - sum(v for v in parts if v is not None)
                found[path, row["mode"]] = row
                rows.append(row)
                print(summary(row), flush=True)
        for mode in MODE_PARTS:
            ref, fast = found["reference", mode].get("ms"), found["fast", mode].get("ms")
            found["reference", mode]["speedup"] = 1.0 if ref else None
            found["fast", mode]["speedup"] = ref / fast if ref and fast else None
    return rows


def summary(row: dict) -> str:
    def f(key, fmt="{:.1f}"):
        return fmt.format(row[key]) if row.get(key) is not None else "-"
    return (f"|Z|={row['states']:>7} {row['path']:>9} {row['mode']:>10} scan={row['scan']:<5} ms={f('ms')} "
            f"peak={f('peak_mib')}MiB " + " ".join(f"{p}={f('ms_' + p)}" for p in PARTS if row.get(f"ms_{p}") is not None)
            + ("" if row["status"] == "ok" else f" [{row['status']}]"))


def write_csv(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({c: ("" if row.get(c) is None else round(row[c], 4) if isinstance(row[c], float) else row[c])
                        for c in COLUMNS})


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    axes[0, 1].sharey(axes[0, 0])
    style = {"reference": "--", "fast": "-"}
    keys = ("ms", *(f"ms_{p}" for p in PARTS), "ms_optimizer")
    colors = dict(zip(keys, plt.cm.tab10.colors))

    def line(ax, mode, path, key, label, **kw):
        pts = [(r["states"], r[key]) for r in rows if r["mode"] == mode and r["path"] == path
               and r.get(key) is not None and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts), style[path], marker="o", label=label, **kw)

    for ax, path in zip(axes[0], style):
        for key in keys:
            line(ax, "train", path, key, "whole step" if key == "ms" else key[3:], color=colors[key],
                 lw=2.5 if key == "ms" else 1.2)
        ax.set_title(f"training step by part: {path}")
    for path in style:
        for mode, key, color in (("eval", "ms", "C0"), ("eval", "ms_dp_forward", "C2"), ("eval_build", "ms", "C1")):
            line(axes[1, 0], mode, path, key, f"{path}: {mode} {'whole' if key == 'ms' else key[3:]}", color=color)
        for mode, key, color in (("train", "peak_mib", "C0"), ("eval_build", "peak_mib", "C1"),
                                 ("eval", "peak_mib", "C2"), ("eval", "resident_mib", "C3")):
            line(axes[1, 1], mode, path, key, f"{path}: {mode} {key[:-4]}", color=color)
    axes[1, 0].set_title("evaluation: one batch (cached parameters), one-off build")
    axes[1, 1].set_title("memory: peak above the step's start; eval resident = weights + cache")
    for ax, ylabel in zip(axes.flat, ("ms", "ms", "ms", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("number of states |Z| (log2)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    r0 = rows[0]
    fig.suptitle(f"VLNHMM step cost on {r0['device']} ({r0['precision']}, {r0['threads']} threads), B={r0['B']} "
                 f"T={r0['T']} h={r0['hidden']} V={r0['vocab']}; dashed: reference (dense, torch scan), solid: fast")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="VLNHMM step cost against |Z|: dense reference vs fast path.")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--states", type=int, nargs="+", required=True, help="|Z| values")
    ap.add_argument("--num-clusters", type=int, nargs="+", default=[128], help="M: one value or one per |Z|")
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.5, help="state dropout")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bptt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed repeats of each step / part")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backend", choices=["torch", "tvm"], default="torch", help="scan of the fast path")
    ap.add_argument("--kernels", type=Path, default=Path("build/kernels"),
                    help="TVM kernel directory (or parent of llvm/, cuda/); n = k' (train) and k (eval)")
    ap.add_argument("--tile", type=int, default=normalizer.TILE, help="columns per tile of the normalizer")
    ap.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls (no effect on CPU)")
    ap.add_argument("--bf16", action="store_true", help="CUDA: bf16 autocast of the forward (no effect on CPU)")
    ap.add_argument("--threads", type=int, help="CPU threads of torch and TVM (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/bench/scale.csv"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    rows = run(args)
    write_csv(rows, args.out)
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
