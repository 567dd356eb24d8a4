"""Plot one run's training curve (curve.csv written by pipeline.train): ppl and lr per check.

    python -m pipeline.curves --csv results/runs/ptb/ff/curve.csv --png results/runs/ptb/ff/curve.png --title ptb/ff
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot(csv: str, png: str, title: str) -> None:
    df = pd.read_csv(csv)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ax.plot(df["epoch"], df["train_ppl"], "o-", ms=3, label="train ppl (running, with dropout)")
    ax.plot(df["epoch"], df["valid_ppl"], "s-", ms=3, label="valid ppl")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (log scale)")
    lr = ax.twinx()
    lr.step(df["epoch"], df["lr"], where="post", color="grey", alpha=0.6, label="lr")
    lr.set_yscale("log")
    lr.set_ylabel("learning rate", color="grey")
    best = df["valid_ppl"].idxmin()
    ax.annotate(f"best valid {df['valid_ppl'][best]:.1f}", (df["epoch"][best], df["valid_ppl"][best]),
                textcoords="offset points", xytext=(0, 10), ha="center", fontsize=8)
    lines = ax.get_legend_handles_labels()[0] + lr.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="upper right")
    ax.set_title(f"training curve: {title}")
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--title", required=True)
    a = p.parse_args(argv)
    plot(a.csv, a.png, a.title)


if __name__ == "__main__":
    main()
