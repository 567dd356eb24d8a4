"""The VLNHMM's scan backends on CPU: training step and evaluation batch, log-space reference vs matmul.

    python -m bench.cpu_scans --threads 2 --out results/bench/cpu_scans_avx512_bf16.csv     (+ the .png)

For the 1,024-state runs a CPU trains (``config/cpu.yaml``: M = 8, M = 4 and dense), the training loop's
own step (:class:`bench.cpu.Step`: forward, backward, clipping, AdamW on synthetic Zipf text with PTB's
vocabulary, B x T = 16 x 32, fp32 as ``cpu_precision: auto`` trains the VLNHMM) and the fp32 evaluation
batch, once per scan backend: ``torch`` (hmm.inference, logsumexp over [B, n, n] per step) and
``matmul`` (hmm.matmul_scan).  Both backends of a model start from the same weights and see the same
windows, timed in interleaved repeats (``ms`` the fastest, ``ms_median`` the median); ``loss_first`` /
``loss_last`` show they train alike.  ``s_per_epoch_with_checks``: a PTB epoch of such steps plus
4 validation checks; ``speedup``: torch / this row, per column.  Each row is written as it is measured.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from bench import save_plot
from bench.cpu import MODELS, PTB_VALID_TOKENS, Step, add_machine_args, machine_of, write
from bench.scale import PTB_TRAIN_TOKENS
from pipeline import cpu

RUNS = {  # model name -> settings, as config/config.yaml's runs
    "vlnhmm-1024-m8": {"num_states": 1024, "num_clusters": 8},
    "vlnhmm-1024-m4": {"num_states": 1024, "num_clusters": 4},
    "vlnhmm-1024-dense": {"num_states": 1024, "num_clusters": 1, "constraint": "none"},
}
BACKENDS = ("torch", "matmul")
COLUMNS = ["model", "backend", "cpu_model", "bf16_kind", "threads", "n_train", "n_eval", "ms", "ms_median",
           "eval_ms", "s_per_epoch", "s_per_epoch_with_checks", "step_speedup", "eval_speedup",
           "loss_first", "loss_last"]


def measure(name: str, args, machine: dict) -> list[dict]:
    steps = {}
    for backend in BACKENDS:
        key = f"{name}:{backend}"
        MODELS[key] = {"model": "vlnhmm", **RUNS[name], "backend": backend}
        steps[backend] = Step(key, "fp32", args.seed)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {b: [] for b in steps}
    for _ in range(args.steps):
        for b, step in steps.items():
            start = time.perf_counter()
            step()
            times[b].append((time.perf_counter() - start) * 1e3)
    evals = {b: min(step.eval_ms() for _ in range(args.eval_repeats)) for b, step in steps.items()}
    settings = steps["torch"].model.cfg
    rows = []
    for b, step in steps.items():
        ms, eval_ms = min(times[b]), evals[b]
        eval_batches = math.ceil(PTB_VALID_TOKENS / step.eval_batch[0] / step.eval_batch[1])
        s_epoch = PTB_TRAIN_TOKENS / (step.B * step.T) * ms / 1e3
        losses = step.losses[args.warmup:]
        row = machine | {"model": name, "backend": b, "n_train": settings.kept_per_block,
                         "n_eval": settings.states_per_block, "ms": ms, "ms_median": statistics.median(times[b]),
                         "eval_ms": eval_ms, "s_per_epoch": s_epoch,
                         "s_per_epoch_with_checks": s_epoch + 4 * eval_batches * eval_ms / 1e3,
                         "step_speedup": min(times["torch"]) / ms, "eval_speedup": evals["torch"] / eval_ms,
                         "loss_first": sum(losses[:2]) / 2, "loss_last": sum(losses[-2:]) / 2}
        rows.append(row)
        print(f"{name:>18} {b:>6}: step {ms:7.1f} ms ({row['step_speedup']:.2f}x), eval {eval_ms:7.1f} ms/batch "
              f"({row['eval_speedup']:.2f}x), {row['s_per_epoch_with_checks'] / 60:6.1f} min/PTB epoch with checks, "
              f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}", flush=True)
    return rows


def plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv_path)
    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.38
    for ax, col, label in ((axes[0], "ms", "ms per training step"), (axes[1], "eval_ms", "ms per evaluation batch")):
        for i, b in enumerate(BACKENDS):
            d = df[df.backend == b].set_index("model").reindex(models)
            xs = [k + (i - 0.5) * width for k in range(len(models))]
            ax.bar(xs, d[col], width, label=b, color=f"C{i}")
            for x, v in zip(xs, d[col]):
                ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(models)), [m.replace("vlnhmm-", "") for m in models])
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    r0 = df.iloc[0]
    fig.suptitle(f"VLNHMM scans on {r0.cpu_model} ({r0.bf16_kind}), {r0.threads} threads, fp32, B x T = 16 x 32")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="VLNHMM training step and evaluation on CPU by scan backend.")
    ap.add_argument("--models", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--steps", type=int, default=6, help="timed steps per backend (interleaved)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--eval-repeats", type=int, default=2)
    add_machine_args(ap, "cpu_scans")
    args = ap.parse_args(argv)
    machine = machine_of(args, "cpu_scans")
    print(f"[bench.cpu_scans] {cpu.describe()}", flush=True)
    rows: list[dict] = []
    for name in args.models:
        rows += measure(name, args, machine)
        write(rows, args.out, COLUMNS)
    png = args.out.with_suffix(".png")
    save_plot(lambda: plot(args.out, png), args.out, png)


if __name__ == "__main__":
    main()
