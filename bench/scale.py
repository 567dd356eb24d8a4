"""Cost of a VLNHMM training step and evaluation batch against the number of states |Z|.

    python -m bench.scale --device cpu --states 256 512 1024 --num-clusters 16 --vocab 10000 --steps 3 \\
        --backend tvm --kernels build/kernels/llvm --out results/bench/scale_cpu.csv
    python -m bench.scale --device cuda --states 4096 8192 16384 32768 65536 131072 262144 --num-clusters 128 \\
        --backend tvm --kernels build/kernels/cuda --precision tf32 --out results/bench/scale_cuda.csv

Per |Z| (M blocks, k = |Z| / M, k' = (1 - dropout) k kept in training, C' = M k' live states): a
VLNHMM (hidden h, state dropout) on synthetic text with a realistic vocabulary (V words in M
random clusters, Zipf frequencies, ``<eos>`` about every 22 tokens), B streams x T tokens.  What is
timed is the training loop's own step, :meth:`pipeline.training.train.Trainer.step` (forward, backward,
clipping, AdamW), and the model's own evaluation; two paths in the same process, same weights,
same windows:

    reference  dense log_softmax of the [C', C'] transition logits, PyTorch scans, fp32
    fast       factors + row normalizers (fused in Triton on CUDA), ``--backend`` scans, ``--precision``

Rows (``mode``): ``train`` one step; ``eval_build`` the one-off build of the cached evaluation
parameters; ``eval`` one batch with them.  ``ms``: median over ``--steps`` after ``--warmup``
(synchronized).  The split by part comes from one more step under torch.profiler, from the ranges
the model names itself (``vlnhmm.mlp``, ``vlnhmm.normalizer``, ``vlnhmm.emission``,
``vlnhmm.potentials``, ``hmm.scan.forward``, ``hmm.scan.backward``, ``hmm.normalizer.backward``)
and torch's optimizer range; CPU time on the CPU, kernel time on CUDA; ``ms_other`` is what the
profiled step spent outside them (the MLPs' and emission's backward, autograd, launches).
``kernels``: CUDA kernels launched per step; ``host_reads``: reads of device data back to the host
per step (each a GPU synchronization, :class:`pipeline.training.timing.CountHostReads`).

Memory: ``peak_mib`` is the peak of tensor memory during one more step above what was allocated
when it began (CUDA: max_memory_allocated; CPU: the profiler's allocation events, summed in
order); ``resident_mib`` what stays allocated between steps (weights, gradients, AdamW state; or
weights and the cached distributions).  ``s_per_ptb_epoch`` = 929,589 / (B T) x ms.
``speedup`` = reference ms / this row's ms.  A configuration that fails (out of memory, say) is
written with its error in ``status`` and the sweep goes on; every row is written when measured.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import traceback
from pathlib import Path

# torch.profiler's kineto writes two "USDT: ... profiler_start/stop" lines per profiled step (level 5)
# and c10 a warning about blocks allocated before it: keep the output to the rows (read at torch's import)
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import save_plot
from hmm import inference
from hmm.config import HMMConfig
from hmm.model import VLNHMM
from pipeline.config import resolve_run
from pipeline.data.corpus import Corpus, Vocab
from pipeline.training.models import NORMALIZER_PRECISION, count_parameters
from pipeline.training.timing import CountHostReads, median, synchronize, time_ms
from pipeline.training.train import Trainer

PTB_TRAIN_TOKENS = 929_589
MATMUL_PRECISION = {ours: torch_name for torch_name, ours in NORMALIZER_PRECISION.items()}  # fp32 -> highest, ...
PARTS = {"mlp": "vlnhmm.mlp", "normalizer": "vlnhmm.normalizer", "emission": "vlnhmm.emission",
         "potentials": "vlnhmm.potentials", "scan_forward": "hmm.scan.forward",
         "scan_backward": "hmm.scan.backward", "normalizer_backward": "hmm.normalizer.backward",
         "optimizer": "Optimizer.step#AdamW.step"}
COLUMNS = ["device", "threads", "path", "mode", "scan", "precision", "states", "clusters", "k", "kept", "live_states",
           "vocab", "hidden", "B", "T", "params", "ms", *(f"ms_{p}" for p in PARTS), "ms_other", "kernels",
           "host_reads", "peak_mib", "resident_mib", "s_per_ptb_epoch", "speedup", "status"]


def synthetic(V: int, M: int, B: int, T: int, count: int, seed: int):
    """(corpus of ``count`` windows of Zipf-distributed words, clusters [V], eos id)."""
    rng = np.random.default_rng(seed)
    clusters = rng.permutation(V) % M
    freq = 1.0 / np.arange(1, V + 1)
    ids = rng.permutation(V)[rng.choice(V, size=B * T * count, p=freq / freq.sum())]
    ids[rng.random(len(ids)) < 1 / 22] = V - 1
    tokens = tuple(f"w{i}" for i in range(V - 1)) + ("<eos>",)
    splits = {s: torch.as_tensor(ids) for s in ("train", "valid", "test")}
    return Corpus(Vocab(tokens, (1,) * V), splits, {s: torch.tensor([0]) for s in splits}), clusters, V - 1


def mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) / 2**20


def peak_mib(fn, device: torch.device) -> float:
    """Peak tensor memory allocated while fn() runs, above what was allocated when it began."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0)) / 2**20


def profile_parts(fn, device: torch.device) -> dict:
    """ms per named part, ms_other, and CUDA kernels launched, of one profiled call of fn()."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        synchronize(device)
    # on a GPU, Kineto adds a device-side copy ("user annotation") of every record_function range, timed as
    # the span: counted with the host-side range (whose device time sums its kernels) it would count twice
    events = [e for e in prof.events() if not getattr(e, "is_user_annotation", False)]
    cuda = device.type == "cuda"

    def ms(e) -> float:
        return (e.device_time_total if cuda else e.cpu_time_total) / 1e3

    out = {f"ms_{part}": sum(ms(e) for e in events if e.name == name) or None for part, name in PARTS.items()}
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(e.device_time_total for e in kernels) / 1e3
        out["kernels"] = len(kernels)
    else:
        roots = [e for e in events if e.cpu_parent is None]
        total = sum(e.cpu_time_total for e in roots) / 1e3
    out["ms_other"] = total - sum(v for v in out.values() if v is not None and isinstance(v, float))
    return out


def host_reads(fn) -> int:
    with CountHostReads() as counter:
        fn()
    return len(counter.reads)


def attempt(row: dict, fn) -> dict:
    """row.update(fn()); on failure (out of memory, say) the error goes into row['status']."""
    try:
        row.update(fn())
    except Exception as err:  # noqa: BLE001 -- a sweep records a failed configuration and goes on
        traceback.print_exc(file=sys.stderr)
        row["status"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


class Setup:
    """One path at one |Z|: a Trainer on synthetic windows (the training loop's step and model)."""

    def __init__(self, cfg: HMMConfig, path: str, args, data, scans, device: torch.device):
        corpus, clusters, eos = data
        self.fast = fast = path == "fast"
        self.device, self.args = device, args
        self.precision = args.precision if fast else "fp32"
        torch.manual_seed(args.seed)
        self.model = VLNHMM(cfg, args.vocab, clusters, eos, seed=args.seed, lean_transition=fast,
                            precision=self.precision)
        run = resolve_run({"name": f"bench-{path}", "dataset": "synthetic", "model": "vlnhmm", "device": device.type,
                           "batch_size": args.batch, "bptt": args.bptt, "lr": 1e-3,
                           "matmul_precision": MATMUL_PRECISION[self.precision], **vars(cfg)})
        self.trainer = Trainer(run, corpus, self.model, Path(args.out).parent / "bench-scratch", Path("unused.pt"))
        windows = [self.trainer.window(s) for s in range(len(corpus.splits["train"]) // (args.batch * args.bptt))]
        self.windows = itertools.cycle([(x.to(device), m.to(device), int(m.sum())) for x, m in windows])
        self.scans = scans
        self.carry = None

    def use_scan(self, n: int) -> str:
        """The scan for n live states: the fast path's backend, the reference's PyTorch."""
        self.model.scan, name = self.scans(n) if self.fast else (inference.TorchScan, "torch")
        return name

    def train_step(self):
        x, mask, ntok = next(self.windows)
        self.trainer.step(x, mask, ntok)

    def eval_batch(self):
        x, mask, _ = next(self.windows)
        with torch.no_grad():
            _, self.carry = self.model(x, mask, self.carry)

    def eval_build(self):
        with torch.no_grad():
            self.model.build(False)


def measure(setup: Setup, mode: str) -> dict:
    args, device = setup.args, setup.device
    fn = {"train": setup.train_step, "eval": setup.eval_batch, "eval_build": setup.eval_build}[mode]
    setup.model.train(mode == "train")
    row = {"ms": median(time_ms(fn, device, warmup=args.warmup, repeats=args.steps))}
    # the parts, host reads and peak memory come after the timing: one that fails (a profiler without CUPTI,
    # say) leaves its columns empty and says why on stderr; the time measured stays in the row
    for what, get in (("profile", lambda: profile_parts(fn, device)), ("host reads", lambda: {"host_reads": host_reads(fn)}),
                      ("peak memory", lambda: {"peak_mib": peak_mib(fn, device)})):
        try:
            row.update(get())
        except Exception:  # noqa: BLE001 -- an extra column of a timed row
            print(f"{what} of this row failed; its columns stay empty:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
    model = setup.model
    if mode == "train":
        opt = setup.trainer.opt
        state = [p.grad for p in model.parameters()] + [v for st in opt.state.values() for v in st.values()]
        row["resident_mib"] = mib(list(model.parameters()) + state)
        row["s_per_ptb_epoch"] = PTB_TRAIN_TOKENS / (args.batch * args.bptt) * row["ms"] / 1e3
    elif mode == "eval":
        p = model.params_for(False)
        cached = [p.log_start, *(getattr(p.emission, a, None) for a in ("rows", "log_norm", "log_probs")),
                  getattr(p.transition, "table", None), getattr(p.transition, "log_probs", None)]
        row["resident_mib"] = mib(list(model.parameters()) + cached)
    return row


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
    if args.threads:
        torch.set_num_threads(args.threads)  # before TVM loads: its pool takes torch's thread count
    clusters = args.num_clusters * len(args.states) if len(args.num_clusters) == 1 else args.num_clusters
    if len(clusters) != len(args.states):
        raise SystemExit("--num-clusters takes one value or one per --states value")
    scans = make_scans(args.backend, args.kernels, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        csv.DictWriter(f, fieldnames=COLUMNS).writeheader()
    rows = []
    for states, M in zip(args.states, clusters):
        cfg = HMMConfig(num_states=states, num_clusters=M, hidden=args.hidden, state_dropout=args.dropout,
                        backend=args.backend)
        data = synthetic(args.vocab, M, args.batch, args.bptt, 4, args.seed)
        common = {"device": args.device, "threads": torch.get_num_threads(), "states": states, "clusters": M,
                  "k": cfg.states_per_block, "kept": cfg.kept_per_block, "vocab": args.vocab, "hidden": args.hidden,
                  "B": args.batch, "T": args.bptt}
        reference_ms: dict[str, float] = {}
        for path in ("reference", "fast"):
            setup: Setup | None = None
            for mode, n in (("train", cfg.kept_per_block), ("eval_build", None), ("eval", cfg.states_per_block)):
                row = common | {"path": path, "mode": mode, "status": "ok",
                                "live_states": M * (cfg.kept_per_block if mode == "train" else cfg.states_per_block)}
                if setup is None:
                    attempt(row, lambda: {"setup": Setup(cfg, path, args, data, scans, device)})
                    setup = row.pop("setup", None)
                if setup is not None:
                    row |= {"scan": setup.use_scan(n) if n else "-", "precision": setup.precision,
                            "params": count_parameters(setup.model)}
                    attempt(row, lambda: measure(setup, mode))
                ms = row.get("ms")
                if path == "reference" and ms:
                    reference_ms[mode] = ms
                row["speedup"] = reference_ms[mode] / ms if ms and reference_ms.get(mode) else None
                append_row(row, out)
                print(summary(row), flush=True)
                rows.append(row)
            del setup
    return rows


def summary(row: dict) -> str:
    def f(key, fmt="{:.1f}"):
        return fmt.format(row[key]) if isinstance(row.get(key), (int, float)) else "-"
    parts = " ".join(f"{p}={f('ms_' + p)}" for p in PARTS if row.get(f"ms_{p}") is not None)
    return (f"|Z|={row['states']:>7} {row['path']:>9} {row['mode']:>10} scan={row.get('scan', '-'):<5} "
            f"ms={f('ms')} peak={f('peak_mib')}MiB host_reads={row.get('host_reads', '-')} {parts}"
            + ("" if row["status"] == "ok" else f" [{row['status']}]"))


def closing_summary(rows: list[dict]) -> str:
    """One line per |Z|: training step and evaluation batch, reference against fast, and the faster."""
    lines = [f"summary ({len(rows)} rows, {sum(r['status'] != 'ok' for r in rows)} failed):"]
    for states in dict.fromkeys(r["states"] for r in rows):
        cells = []
        for mode in ("train", "eval"):
            ms = {r["path"]: r.get("ms") for r in rows if r["states"] == states and r["mode"] == mode}
            if ms.get("reference") and ms.get("fast"):
                faster = "fast" if ms["fast"] < ms["reference"] else "reference"
                cells.append(f"{mode} {ms['reference']:.1f} / {ms['fast']:.1f} ms ({faster} faster)")
            else:
                cells.append(f"{mode} " + " / ".join(f"{ms.get(p) or '-'}" for p in ("reference", "fast")))
        lines.append(f"  |Z|={states:>7}: reference / fast: " + "; ".join(cells))
    return "\n".join(lines)


def append_row(row: dict, path: Path) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=COLUMNS).writerow(
            {c: ("" if row.get(c) is None else round(row[c], 4) if isinstance(row[c], float) else row[c])
             for c in COLUMNS})


def plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    style = {"reference": "--", "fast": "-"}
    parts = ["ms", *(f"ms_{p}" for p in PARTS), "ms_other"]
    colors = dict(zip(parts, plt.cm.tab10.colors))
    for ax, path in zip(axes[0], style):
        d = df[(df["mode"] == "train") & (df["path"] == path)]
        for key in parts:
            got = d[d[key] > 0]
            if len(got):
                ax.plot(got.states, got[key], style[path], marker="o", color=colors[key],
                        lw=2.5 if key == "ms" else 1.2, label="whole step" if key == "ms" else key[3:])
        ax.set_title(f"training step by part: {path}")
    for path in style:
        for mode, key, color in (("eval", "ms", "C0"), ("eval_build", "ms", "C1"), ("train", "ms", "C2")):
            d = df[(df["mode"] == mode) & (df["path"] == path) & (df[key] > 0)]
            if len(d):
                axes[1, 0].plot(d.states, d[key], style[path], marker="o", color=color, label=f"{path}: {mode}")
        for mode, key, color in (("train", "peak_mib", "C0"), ("eval_build", "peak_mib", "C1"),
                                 ("eval", "resident_mib", "C3")):
            d = df[(df["mode"] == mode) & (df["path"] == path) & (df[key] > 0)]
            if len(d):
                axes[1, 1].plot(d.states, d[key], style[path], marker="o", color=color, label=f"{path}: {mode} {key[:-4]}")
    axes[1, 0].set_title("ms per training step, evaluation batch, one-off evaluation build")
    axes[1, 1].set_title("memory: peak above the step's start; eval resident = weights + cache")
    for ax, ylabel in zip(axes.flat, ("ms", "ms", "ms", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("number of states |Z|")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    r0 = df.iloc[0]
    fig.suptitle(f"VLNHMM step cost on {r0['device']} ({r0['threads']} threads), B={r0['B']} T={r0['T']} "
                 f"h={r0['hidden']} V={r0['vocab']}; dashed: reference (dense, PyTorch scans, fp32), solid: fast")
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
    ap.add_argument("--steps", type=int, default=5, help="timed repeats of each step")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backend", choices=["torch", "tvm"], default="torch", help="scan of the fast path")
    ap.add_argument("--kernels", type=Path, default=Path("build/kernels"),
                    help="TVM kernel directory (or parent of llvm/, cuda/); n = k' (train) and k (eval)")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="operands of the fast path's transition normalizer and entries")
    ap.add_argument("--threads", type=int, help="CPU threads of torch and TVM (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/bench/scale.csv"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    rows = run(args)
    print(closing_summary(rows))
    png = args.out.with_suffix(".png")
    save_plot(lambda: plot(args.out, png), args.out, png)


if __name__ == "__main__":
    main()
