"""bf16 against fp32 training on full PTB: the first epoch's validation perplexity of each, side by side.

    python -m bench.first_epoch --runs ptb/ff ptb/lstm ptb/vlnhmm-1024-m8 --threads 2 \\
        --out results/bench/first_epoch_avx512_bf16.csv

Each run of the config (its paper settings: model, batch, lr, dropout, seed) is trained for one epoch on
this CPU twice, ``cpu_precision: fp32`` and ``bf16``, from the same seed and data order, into a
scratch directory (nothing in results/ is touched); both are scored in fp32 on the whole valid set with
the weights of the end of the epoch.  Rows: run, precision, valid ppl, seconds of training (checks
included), the CPU; ``valid_vs_fp32_pct`` = 100 (bf16 / fp32 - 1).  Needs the prepared data (and the
run's clusters): ``snakemake data/ptb/clusters/brown-8.tsv``.
"""
from __future__ import annotations

import argparse
import dataclasses
import csv
import tempfile
import time
from pathlib import Path

import torch

from pipeline import cpu
from pipeline.config import resolve_runs
from pipeline.data.corpus import Corpus
from pipeline.profiles import load_config
from pipeline.training.models import build_model
from pipeline.training.train import train

COLUMNS = ["run", "precision", "valid_ppl", "valid_vs_fp32_pct", "train_seconds", "cpu_model", "bf16_kind", "threads"]


def one_epoch(run, precision: str, corpus: Corpus, scratch: Path) -> dict:
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=1, device="cpu", cpu_precision=precision,
                                                             test_weights="last"))
    clusters = Path(run.inputs()["clusters"]) if "clusters" in run.inputs() else None
    torch.manual_seed(run.train.seed)
    model = build_model(run, corpus, clusters)
    start = time.perf_counter()
    out = scratch / f"{run.name}-{precision}"
    metrics = train(run, corpus, model, out, out / "ckpt.pt")
    return {"run": run.key, "precision": precision, "valid_ppl": metrics["valid_ppl"],
            "train_seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="First-epoch valid ppl of bf16 against fp32 training on a CPU.")
    ap.add_argument("--runs", nargs="+", default=["ptb/ff", "ptb/lstm", "ptb/vlnhmm-1024-m8"])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path(f"results/bench/first_epoch_{cpu.kind()}.csv"))
    args = ap.parse_args(argv)
    if cpu.kind() == "none":  # before an hour of fp32 training, not after it
        raise SystemExit(f"bench.first_epoch compares bf16 training with fp32: this {cpu.model_name()} has no native "
                         "bf16 (neither AMX-BF16 nor AVX512-BF16), where runs train in fp32 only")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as training does
    runs = {r.key: r for r in resolve_runs(load_config())}
    machine = {"cpu_model": cpu.model_name(), "bf16_kind": cpu.kind(), "threads": torch.get_num_threads()}
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for key in args.runs:
            run = runs[key]
            corpus = Corpus.load(Path(run.inputs()["data"]).parent)  # once for both precisions
            pair = [one_epoch(run, p, corpus, Path(scratch)) | machine for p in ("fp32", "bf16")]
            pair[1]["valid_vs_fp32_pct"] = round(100 * (pair[1]["valid_ppl"] / pair[0]["valid_ppl"] - 1), 3)
            rows += pair
            print(f"[first_epoch] {key}: valid ppl fp32 {pair[0]['valid_ppl']:.2f} ({pair[0]['train_seconds']:.0f} s), "
                  f"bf16 {pair[1]['valid_ppl']:.2f} ({pair[1]['train_seconds']:.0f} s): "
                  f"{pair[1]['valid_vs_fp32_pct']:+.2f} %", flush=True)
            with open(args.out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS)
                w.writeheader()
                w.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
