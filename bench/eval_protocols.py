"""A trained baseline scored under three evaluation protocols: does how the paper's baselines were scored
explain the difference to its numbers?

    python -m bench.eval_protocols --runs ptb/ff ptb/lstm     # results/bench/eval_protocols.csv

Each run's best weights (``build/checkpoints/<run>/best.pt``, checked against their SHA-256 record) are
scored on the valid split in the run's evaluation windows (``eval_batch_size`` streams, ``bptt`` steps):

* ``carried`` (ours, the paper's definition of perplexity): the LSTM state / the FF's n-1 context words
  carried across windows, every token scored; the run's own valid perplexity;
* ``reset``: the state / context dropped at every window start (zero state / pad context), every token
  scored;
* ``reset-skip-first``: dropped at every window start, and each window's first token neither scored nor
  counted (how the authors' development code, justinchiu/hmm-lm, scored its baselines).

Rows: run, protocol, valid_ppl, tokens (those counted), the weights' SHA-256.  Evaluation in fp32.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

from pipeline.config import resolve_runs
from pipeline.data.corpus import Corpus, Windows
from pipeline.integrity import verify
from pipeline.profiles import load_config
from pipeline.training.models import build_model

PROTOCOLS = ("carried", "reset", "reset-skip-first")
COLUMNS = ["run", "protocol", "valid_ppl", "tokens", "weights_sha256"]


@torch.no_grad()
def score(model, ids: torch.Tensor, batch_size: int, bptt: int, protocol: str) -> tuple[float, int]:
    """(perplexity, tokens counted) of ``ids`` under ``protocol`` (see the module docstring)."""
    model.eval()
    windows = Windows(ids, batch_size, bptt)
    total, count, carry = 0.0, 0, model.initial_state(windows.batch_size)
    for x, mask in windows:
        logp, new_carry = model(x, mask, carry if protocol == "carried" else model.initial_state(len(x)),
                                per_token=True)
        counted = mask.clone()
        if protocol == "reset-skip-first":
            counted[:, 0] = False
        total += float(logp[counted].double().sum())
        count += int(counted.sum())
        carry = new_carry
    return math.exp(-total / count), count


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="A trained baseline's valid perplexity under three evaluation protocols.")
    ap.add_argument("--runs", nargs="+", default=["ptb/ff", "ptb/lstm"])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("results/bench/eval_protocols.csv"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {r.key: r for r in resolve_runs(load_config())}
    rows = []
    for key in args.runs:
        run = runs[key]
        weights = Path(run.checkpoint).parent / "best.pt"
        digest = verify(weights, f"train {key} first (its best weights are written at its validation checks)")
        corpus = Corpus.load(Path(run.inputs()["data"]).parent)
        model = build_model(run, corpus)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        for protocol in PROTOCOLS:
            ppl, tokens = score(model, corpus.splits["valid"], run.train.eval_batch_size, run.train.bptt, protocol)
            rows.append({"run": key, "protocol": protocol, "valid_ppl": round(ppl, 2), "tokens": tokens,
                         "weights_sha256": digest})
            print(f"[eval_protocols] {key} {protocol:>16}: valid ppl {ppl:8.2f} over {tokens:,} tokens", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
