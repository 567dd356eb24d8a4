"""CPU roofline of the training steps: fp32 against bf16, each step against its own floor.

    python -m bench.cpu --threads 2 --out results/bench/cpu_avx512_bf16.csv     (+ the .png beside it)

In one process, on this CPU (``pipeline.cpu``: model name and native bf16 kind on every row):

* machine rows (``model = gemm-2048``): the rate of a square 2048^3 product in fp32 and bf16, GFLOP/s;
* per model, the PTB-size training step of the training loop itself
  (:meth:`pipeline.training.train.Trainer.step`: forward, backward, clipping, AdamW) on synthetic
  Zipf text with PTB's vocabulary (10,000 words), in fp32 and in bf16 (``cpu_precision``), the two
  timed in interleaved repeats (``ms`` the fastest, ``ms_median`` the median); the models and batch shapes of the paper runs:
  ``ff`` (5-gram, 256, B x T = 128 x 64), ``lstm`` (2 x 256, 16 x 32), ``vlnhmm-1024-m8``
  (1,024 states, M = 8, h = 256, state dropout 0.5, 16 x 32, the CPU's training transition path; scans: the
  log-space reference, ``backend: torch``, which at M = 8 is within 2 % of the ``matmul`` scans the CPU profile
  trains with, ``bench.cpu_scans``);
* per model and precision, the **floor**: the step's own matrix products (the shapes it multiplies,
  forward and backward, in that precision) each timed alone and summed.  A step cannot beat it;
  ``x_floor`` = step ms / floor ms;
* the fp32 evaluation batch (``eval_ms``, the run's eval batch) and from it the wall time of a PTB
  epoch with its validation checks (4 checks x the valid batches);
* ``loss_first`` / ``loss_last``: the mean training loss over the first and last of ``--steps``
  identical-seed steps (fp32 and bf16 start from the same weights and see the same windows).

On a CPU without native bf16 only fp32 is timed (its training never uses bf16: :func:`precisions`).

``ratio`` = fp32 step ms / this row's step ms (same run).  ``target`` is the project's speed target for this
CPU kind (s per PTB epoch for FF and LSTM, ms per step for the VLNHMM on AMX and AVX512-BF16
machines; a multiple of the floor on other CPUs), ``meets`` whether the row of the precision
``cpu_precision: auto`` trains in on this CPU meets it.  Timings move 10-20 % between runs on shared machines: compare rows of
one run, on a quiet machine.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import time
from pathlib import Path

import torch

from bench import save_plot
from bench.scale import PTB_TRAIN_TOKENS, synthetic
from pipeline import cpu
from pipeline.config import resolve_run
from pipeline.data.corpus import Windows
from pipeline.training import precision
from pipeline.training.models import build_model, build_vlnhmm
from pipeline.training.train import Trainer

PTB_VALID_TOKENS = 73_760
V, H = 10_000, 256
MODELS = {  # name -> (runs: entry, the step's products as (count, m, k, n) or bmm (count, b, m, k, n))
    "ff": {"model": "ff"},
    "lstm": {"model": "lstm"},
    "vlnhmm-1024-m8": {"model": "vlnhmm", "num_states": 1024, "num_clusters": 8, "backend": "torch"},
}
# issue targets by CPU kind: FF / LSTM seconds per PTB epoch, VLNHMM ms per step; elsewhere multiples of the floor
TARGETS = {"amx": {"ff": ("s_per_epoch", 40), "lstm": ("s_per_epoch", 55), "vlnhmm-1024-m8": ("ms", 60)},
           "avx512_bf16": {"ff": ("s_per_epoch", 70), "lstm": ("s_per_epoch", 85), "vlnhmm-1024-m8": ("ms", 60)},
           "none": {"ff": ("x_floor", 1.4), "lstm": ("x_floor", 1.8), "vlnhmm-1024-m8": ("x_floor", 2.5)}}
COLUMNS = ["model", "precision", "cpu_model", "bf16_kind", "threads", "B", "T", "ms", "ms_median", "s_per_epoch", "ratio",
           "gflop", "floor_ms", "x_floor", "gflops", "eval_ms", "eval_batches", "s_per_epoch_with_checks",
           "loss_first", "loss_last", "target", "meets"]


# -- the step's products --------------------------------------------------------------------


def products(name: str, B: int, T: int) -> list[tuple]:
    """The training step's matrix products as (count, batch, m, k, n): forward, input and weight
    gradients; B x T tokens, hidden H, vocabulary V."""
    N = B * T
    out = [(1, 1, N, H, V), (1, 1, N, V, H), (1, 1, V, N, H)]         # output layer: logits, dh, dW
    if name == "ff":
        K = 4
        return out + [(1, 1, N, K * H, H), (1, 1, N, H, K * H), (1, 1, K * H, N, H)] + [  # the context conv
            (1, 1, N, H, H), (1, 1, N, H, H), (1, 1, H, N, H)]                          # the hidden layer
    if name == "lstm":
        layers = 2
        return out + [(layers * 3, 1, N, H, 4 * H)] + [(layers * 3 * T, 1, B, H, 4 * H)]  # inputs; recurrence
    # vlnhmm 1,024 states, M = 8, k' = 64 kept of k = 128: C' = 512 live states
    C, M, kept, Q = 512, 8, 64, 32
    chunks = math.ceil(V / Q) + M
    mlps = 3 * 2 * 3 + 3  # start, transition, emission residual blocks (2 linears each) x fwd/bwd, start_out
    return [(mlps, 1, C, H, H), (3, 1, C, H, C), (3, chunks, kept, H, Q)]


def flops(prods: list[tuple]) -> float:
    return sum(2.0 * c * b * m * k * n for c, b, m, k, n in prods)


def time_product(b: int, m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """ms of one (b x) [m, k] @ [k, n] product in ``dtype`` (min of ``repeats`` after a warm-up)."""
    x, y = torch.randn(b, m, k).to(dtype), torch.randn(b, k, n).to(dtype)
    fn = (lambda: torch.bmm(x, y)) if b > 1 else (lambda: x[0] @ y[0])
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def floor_ms(prods: list[tuple], dtype: torch.dtype) -> float:
    return sum(c * time_product(b, m, k, n, dtype) for c, b, m, k, n in prods)


def gemm_rate(dtype: torch.dtype, size: int = 2048) -> float:
    return 2 * size**3 / time_product(1, size, size, size, dtype) / 1e6


# -- the training step ------------------------------------------------------------------


class Step:
    """The training loop's step for one model and precision, on synthetic windows."""

    def __init__(self, name: str, precision: str, seed: int):
        entry = MODELS[name]
        model = entry["model"]
        M = entry.get("num_clusters", 8)
        run = resolve_run({"name": f"bench-{name}", "dataset": "synthetic", "device": "cpu", "seed": seed,
                           "cpu_precision": precision, **entry})
        self.B, self.T = run.train.batch_size, run.train.bptt
        corpus, clusters, _ = synthetic(V, M, self.B, self.T, 4, seed)
        self.eval_batch = (run.train.eval_batch_size, run.train.bptt)
        torch.manual_seed(seed)
        if model == "vlnhmm":
            self.model = build_vlnhmm(run, V, clusters, V - 1)
        else:
            self.model = build_model(run, corpus)
        self.trainer = Trainer(run, corpus, self.model, Path("/tmp/bench-cpu-scratch"), Path("unused.pt"))
        self.windows = itertools.cycle([self.trainer.window(s) for s in range(4)])
        # every timed step carries the previous window's state (the VLNHMM's carried prior, the LSTM's state),
        # as all but the first of a PTB epoch's steps do: the synthetic epoch's 4 windows would reset it every 4th
        self.trainer.steps_per_epoch = 10**9
        self.corpus = corpus
        self.losses: list[float] = []

    def __call__(self) -> None:
        x, mask = next(self.windows)
        before = float(self.trainer.loss_sum)
        self.trainer.step(x, mask, int(mask.sum()))
        self.losses.append(-(float(self.trainer.loss_sum) - before) / int(mask.sum()))

    def eval_ms(self, batches: int = 3) -> float:
        """ms of one fp32 evaluation batch (eval mode, the run's eval batch shape)."""
        B, T = self.eval_batch
        ids = self.corpus.splits["valid"][: B * T * batches]
        windows = list(Windows(ids, B, T))
        self.model.eval()
        if hasattr(self.model, "prepare_evaluation"):
            self.model.prepare_evaluation()
        with torch.no_grad():
            carry = self.model.initial_state(B)
            _, carry = self.model(*windows[0], carry)
            start = time.perf_counter()
            for x, mask in windows[1:]:
                _, carry = self.model(x, mask, carry)
            ms = (time.perf_counter() - start) * 1e3 / (len(windows) - 1)
        self.model.train()
        return ms


# -- the benchmark ----------------------------------------------------------------------


def precisions() -> tuple[str, ...]:
    """fp32 and bf16; fp32 alone on a CPU without native bf16 (emulated bf16 is ~8x slower than fp32 on a Zen 3,
    oneDNN builds no bf16 LSTM there, and a run refuses ``cpu_precision: bf16`` on it)."""
    return ("fp32", "bf16") if cpu.kind() != "none" else ("fp32",)


def measure(name: str, args, machine: dict) -> list[dict]:
    steps = {p: Step(name, p, args.seed) for p in precisions()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {p: [] for p in steps}
    for _ in range(args.steps):  # interleaved: both precisions see the same machine state
        for p, step in steps.items():
            start = time.perf_counter()
            step()
            times[p].append((time.perf_counter() - start) * 1e3)
    eval_ms = steps["fp32"].eval_ms()
    fp32 = steps["fp32"]
    eval_batches = math.ceil(PTB_VALID_TOKENS / fp32.eval_batch[0] / fp32.eval_batch[1])
    prods = products(name, fp32.B, fp32.T)
    rows = []
    for p, step in steps.items():
        ms = min(times[p])
        floor = floor_ms(prods, steps[p].trainer.precision.dtype or torch.float32)
        s_epoch = PTB_TRAIN_TOKENS / (step.B * step.T) * ms / 1e3
        losses = step.losses[args.warmup:]
        row = machine | {"model": name, "precision": p, "B": step.B, "T": step.T, "ms": ms,
                         "ms_median": statistics.median(times[p]), "s_per_epoch": s_epoch,
                         "ratio": min(times["fp32"]) / ms, "gflop": flops(prods) / 1e9, "floor_ms": floor,
                         "x_floor": ms / floor, "gflops": flops(prods) / ms / 1e6, "eval_ms": eval_ms,
                         "eval_batches": eval_batches,
                         "s_per_epoch_with_checks": s_epoch + 4 * eval_batches * eval_ms / 1e3,
                         "loss_first": sum(losses[:2]) / 2, "loss_last": sum(losses[-2:]) / 2}
        if p == precision.choose("auto", MODELS[name]["model"], torch.device("cpu")).name:  # what auto trains in
            what, bound = TARGETS[machine["bf16_kind"]][name]
            row["target"] = f"{what} <= {bound:g}"
            row["meets"] = row[what] <= bound
        rows.append(row)
        print(f"{name:>15} {p}: {ms:7.1f} ms/step ({s_epoch:6.1f} s/PTB epoch, {row['s_per_epoch_with_checks']:6.1f} "
              f"with checks), {row['ratio']:.2f}x fp32, floor {floor:.1f} ms (x{row['x_floor']:.2f}), "
              f"eval {eval_ms:.1f} ms/batch, loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}"
              + (f"; target {row['target']}: {'met' if row['meets'] else 'NOT met'}" if "target" in row else ""),
              flush=True)
    return rows


def write(rows: list[dict], path: Path, columns: list[str] = COLUMNS) -> None:
    """The rows as CSV (floats to 4 decimals, missing cells empty), rewritten whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({c: round(row[c], 4) if isinstance(row.get(c), float) else row.get(c, "") for c in columns})


def add_machine_args(ap: argparse.ArgumentParser, stem: str) -> None:
    """--threads, --seed, --out (default results/bench/<stem>_<kind>.csv) and --kind of a CPU benchmark."""
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(f"results/bench/{stem}_{cpu.kind()}.csv"))
    ap.add_argument("--kind", choices=cpu.KINDS, help="stop unless this CPU is of this kind (the file it writes "
                    "is named by it)")


def machine_of(args, stem: str) -> dict:
    """Stop unless the CPU is of ``--kind``; set the threads and denormal flushing as training does; the
    machine's columns of every row."""
    if args.kind and args.kind != cpu.kind():
        raise SystemExit(f"this CPU ({cpu.model_name()}) is of kind {cpu.kind()}, not {args.kind}: its benchmark is "
                         f"results/bench/{stem}_{cpu.kind()}.csv")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as training does
    return {"cpu_model": cpu.model_name(), "bf16_kind": cpu.kind(), "threads": torch.get_num_threads()}


def plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    steps = df[~df.model.str.startswith("gemm")]
    models = list(dict.fromkeys(steps.model))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.4), squeeze=False)
    for ax, name in zip(axes[0], models):
        d = steps[steps.model == name].set_index("precision")
        x = range(len(d))
        ax.bar(x, d.ms, color=["C0" if p == "fp32" else "C1" for p in d.index], label="training step")
        ax.bar(x, d.floor_ms, width=0.35, color="k", alpha=0.35, label="floor: its products alone")
        for i, (p, r) in enumerate(d.iterrows()):
            ax.text(i, r.ms, f"{r.ms:.0f} ms\n{r.s_per_epoch:.0f} s/epoch\nx{r.x_floor:.1f} floor", ha="center",
                    va="bottom", fontsize=8)
        ax.set_xticks(list(x), [f"{p}\n({r.ratio:.2f}x fp32)" for p, r in d.iterrows()])
        ax.set_title(name)
        ax.set_ylabel("ms per training step")
        ax.set_ylim(0, d.ms.max() * 1.35)
        ax.legend(fontsize=7, loc="upper right")
    r0 = df.iloc[0]
    rates = {r.precision: r.gflops for r in df[df.model.str.startswith("gemm")].itertuples()}
    fig.suptitle(f"{r0.cpu_model} ({r0.bf16_kind}), {r0.threads} threads: GEMM 2048^3 "
                 + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in rates.items()))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="CPU training steps, fp32 vs bf16, against their floors.")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=12, help="timed steps of each precision (interleaved)")
    ap.add_argument("--warmup", type=int, default=2)
    add_machine_args(ap, "cpu")
    args = ap.parse_args(argv)
    machine = machine_of(args, "cpu")
    print(f"[bench.cpu] {cpu.describe()}", flush=True)
    rows = [machine | {"model": "gemm-2048", "precision": p, "gflops": gemm_rate(dt)}
            for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)) if p in precisions()]
    print("[bench.cpu] GEMM 2048^3: " + ", ".join(f"{r['precision']} {r['gflops']:.0f} GFLOP/s" for r in rows)
          + ("" if "bf16" in precisions() else "; bf16 not timed: this CPU has no native bf16 (training uses fp32)"))
    for name in args.models:
        rows += measure(name, args, machine)
        write(rows, args.out)
    png = args.out.with_suffix(".png")
    save_plot(lambda: plot(args.out, png), args.out, png)


if __name__ == "__main__":
    main()
