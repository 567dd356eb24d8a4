"""Plot one run's training curve (curve.csv written by pipeline.training.train): perplexities per check, with the
run's settings, its profile and the paper's number for the rows it fills.

``plot(csv, png, title)`` reads what else it shows from beside the CSV: ``spec.json`` (the run's
settings) and ``metrics.json`` (status, epochs, steps, provenance); the paper's numbers from
config/paper.yaml; the profile label and the paper rows the run fills from ``$REPRO_CURVE_CONTEXT``
(JSON ``{"label": ..., "rows": {"ptb/ff": ["table1/ff"], ...}}``, which the workflow sets: neither is
part of what a run computes).  Each can also be passed.

    python -m pipeline.training.curves --csv results/runs/ptb/ff/curve.csv --png results/runs/ptb/ff/curve.png --title ptb/ff
"""
from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from pipeline.files import read_json  # noqa: E402

PAPER_YAML = Path(__file__).resolve().parents[2] / "config" / "paper.yaml"
CONTEXT_ENV = "REPRO_CURVE_CONTEXT"


def run_label(spec: dict | None) -> str:
    """A model label that names what the run trained, e.g. ``VLNHMM |Z| = 1024, M = 16``."""
    if not spec:
        return ""
    s, model = spec.get("settings") or {}, spec.get("model")
    if model == "kn5":
        return f"KN {s.get('order', 5)}-gram"
    if model == "ff":
        return f"{s.get('hidden')} FF {s.get('order', 5)}-gram"
    if model == "lstm":
        return f"{s.get('layers')}x{s.get('hidden')} LSTM"
    if model != "vlnhmm":
        return str(spec.get("name", ""))
    parts = [f"VLNHMM |Z| = {s.get('num_states')}"]
    constraint = s.get("constraint")
    if constraint == "brown":
        parts.append(f"M = {s.get('num_clusters')}")
    elif constraint == "uniform":
        parts.append(f"uniform {s.get('states_per_word')}/word")
    elif constraint == "none":
        parts.append("no constraint")
    extra = []
    if s.get("neural") is False:
        extra.append("\u2212 neural param")
    if not s.get("state_dropout") and constraint != "uniform":
        extra.append("\u2212 dropout")
    if s.get("state_repr") == "factored":
        extra.append("+ block emb")
    return ", ".join(parts) + "".join(f" {e}" for e in extra)




def paper_numbers(spec: dict | None, paper: dict | None) -> list[tuple[float, str]]:
    """(valid ppl, label) of the paper for the table rows the run fills, one per distinct value."""
    if not spec or not paper:
        return []
    found: dict[float, list[str]] = {}
    for row in spec.get("rows", []):
        table, _, key = row.partition("/")
        rows = (paper.get(table) or {}).get("rows")
        if not key or rows is None:
            continue
        rows = rows.get(spec.get("dataset"), []) if isinstance(rows, dict) else rows
        for prow in rows:
            if prow.get("key") == key and prow.get("valid") is not None:
                where = found.setdefault(float(prow["valid"]), [])
                if table.removeprefix("table") not in where:
                    where.append(table.removeprefix("table"))
    return [(v, f"paper valid {v:g} (Table{'s' if len(w) > 1 else ''} {', '.join(sorted(w))}, "
                f"{spec.get('dataset', '')})") for v, w in sorted(found.items())]


def nice_log_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Round tick values (1, 1.5, 2, 3, 5, 7 x 10^k) between lo and hi, at most ``most`` of them."""
    cands = sorted(m * 10 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                   for m in (1, 1.5, 2, 3, 4, 5, 7))
    ticks = [t for t in cands if lo <= t <= hi]
    while len(ticks) > most:
        ticks = ticks[::2]
    return ticks


def settings_line(spec: dict | None, metrics: dict | None, df: pd.DataFrame) -> str:
    train = (spec or {}).get("train") or {}
    m = metrics or {}
    parts = []
    if train:
        lr = df["lr"].dropna()
        constant = lr.nunique() <= 1
        parts.append(f"lr {train.get('lr', lr.iloc[0] if len(lr) else float('nan')):g}"
                     + (" (constant)" if constant else f" (decayed to {lr.min():g})"))
        parts.append(f"batch {train.get('batch_size')} x bptt {train.get('bptt')}")
        done = m.get("epochs", df["epoch"].max())
        parts.append(f"{done:g} of {train.get('epochs'):g} epochs ({m.get('steps', '?')} steps)")
        parts.append(f"seed {train.get('seed')}")
    if m.get("status"):
        parts.append(str(m["status"]))
    return ", ".join(parts)


def context() -> dict:
    """The workflow's context for curves ($REPRO_CURVE_CONTEXT): profile label, paper rows per run."""
    try:
        found = json.loads(os.environ.get(CONTEXT_ENV) or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def plot(csv: str | Path, png: str | Path, title: str, spec: dict | None = None, metrics: dict | None = None,
         paper: dict | str | Path | None = None, profile: str | None = None, rows: list[str] | None = None) -> None:
    """The curve of ``csv`` into ``png``; spec, metrics, paper numbers, profile label, rows as the module says."""
    csv, ctx = Path(csv), context()
    spec = spec if spec is not None else read_json(csv.parent / "spec.json")
    if spec is not None and not spec.get("rows"):
        key = f"{spec.get('dataset')}/{spec.get('name')}"
        spec = {**spec, "rows": rows if rows is not None else (ctx.get("rows") or {}).get(key, [])}
    metrics = metrics if metrics is not None else read_json(csv.parent / "metrics.json")
    if paper is None or isinstance(paper, (str, Path)):
        path = Path(paper) if paper is not None else PAPER_YAML
        paper = yaml.safe_load(path.read_text()) if path.is_file() else None
    profile = profile if profile is not None else ctx.get("label") or None
    df = pd.read_csv(csv)

    fig, ax = plt.subplots(figsize=(7.6, 5.2))
    fig.subplots_adjust(left=0.1, right=0.97 if df["lr"].nunique() <= 1 else 0.85, top=0.8, bottom=0.3)
    ax.plot(df["epoch"], df["valid_ppl"], "s-", ms=4, color="C1", label="valid ppl (each check)")
    ax.plot(df["epoch"], df["train_ppl"], "o:", ms=3, color="C0", label="train ppl (running, under dropout)")
    best = df["valid_ppl"].idxmin()
    ax.plot(df["epoch"][best], df["valid_ppl"][best], "*", ms=14, color="C3", zorder=5,
            label=f"best valid {df['valid_ppl'][best]:.1f} (epoch {df['epoch'][best]:.2f}; scored)")
    values = list(df["valid_ppl"].dropna()) + list(df["train_ppl"].dropna())
    for (value, label), ls in zip(paper_numbers(spec, paper), ["--", "-.", ":", (0, (5, 1, 1, 1))] * 9):
        ax.axhline(value, ls=ls, color="0.45", lw=1.2, label=textwrap.shorten(label, 70, placeholder=" ..."))
        values.append(value)
    ax.set_yscale("log")
    lo, hi = min(values) / 1.12, max(values) * 1.12
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator(nice_log_ticks(lo, hi)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (log scale)")
    ax.grid(alpha=0.3)
    ax.set_xlim(0, max(df["epoch"].max(), 1e-9) * 1.05)
    if df["lr"].nunique() > 1:
        lr = ax.twinx()
        lr.step(df["epoch"], df["lr"], where="post", color="0.6", lw=1, label="lr (right axis)")
        lr.set_yscale("log")
        lr.set_ylim(df["lr"].min() / 1.5, df["lr"].max() * 1.5)
        lr.yaxis.set_major_locator(FixedLocator(sorted(set(df["lr"]))))
        lr.yaxis.set_minor_locator(NullLocator())
        lr.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        lr.set_ylabel("lr", color="0.45")
        handles = ax.get_legend_handles_labels()[0] + lr.get_legend_handles_labels()[0]
    else:
        handles = ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, ncol=2, loc="upper center",
              bbox_to_anchor=(0.5, -0.15), frameon=False)
    head = f"{title}: {run_label(spec)}" if spec else f"training curve: {title}"
    fig.text(0.5, 0.985, head, ha="center", va="top", fontsize=11, weight="bold")
    fig.text(0.5, 0.93, textwrap.fill(settings_line(spec, metrics, df), 110), ha="center", va="top", fontsize=8.5)
    if profile:
        fig.text(0.5, 0.865, f"[{profile}]", ha="center", va="top", fontsize=8.5, color="#8a4b00")
    prov = (metrics or {}).get("provenance") or {}
    if prov:
        fig.text(0.01, 0.015, f"commit {prov.get('commit')}, {prov.get('date')}, "
                 f"{(metrics or {}).get('device_name') or prov.get('device_name', '')}; data: curve.csv beside "
                 "this image", fontsize=7.5, color="0.35")
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--paper", help="config/paper.yaml (default: the repository's)")
    p.add_argument("--profile", help="the profile label (default: from $REPRO_CURVE_CONTEXT)")
    p.add_argument("--rows", nargs="*", help="the paper rows the run fills, e.g. table1/ff (default: from spec.json "
                   "or $REPRO_CURVE_CONTEXT)")
    a = p.parse_args(argv)
    plot(a.csv, a.png, a.title, paper=a.paper, profile=a.profile, rows=a.rows)


if __name__ == "__main__":
    main()
