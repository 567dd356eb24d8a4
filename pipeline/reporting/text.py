"""Text of the tables and figures: cell values, titles, and the notes under them."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import intervals
from pipeline.reporting.runs import load_json

WITHIN_PCT = 3.0  # "within +-3 % of the paper", the front page's verdict
FIGURE_NOTE = ("Paper: only the points its tables also report (hollow squares; the paper's curves are not in its "
               "text and none is read off its plots; that the tables' runs are the figure's is assumed).  Where "
               "the tables give one setting two values, both are shown; our difference is to the first.")


# ---------------------------------------------------------------------------------- text
def missing(v: Any) -> bool:
    return v is None or v is pd.NA or isinstance(v, float) and math.isnan(v)



# ---------------------------------------------------------------------------------- labels
def pow2(n: Any) -> str:
    """2^k for powers of two from 1024 up (the paper's notation), the plain number otherwise."""
    if missing(n):
        return "\u2013"
    n = int(n)
    return f"2^{n.bit_length() - 1}" if n >= 1024 and n & (n - 1) == 0 else f"{n}"



def fmt(v: Any, kind: str = "") -> str:
    """A cell value as text: ``params`` 1.2M / 3.4k, ``pct`` +1.2 %, ``diff`` +1.23, floats 2 decimals."""
    if missing(v) or v == "":
        return "\u2013"
    if kind == "params" and not isinstance(v, str):
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e3 else str(v)
    if kind == "pct":
        return f"{v:+.1f} %"
    if kind == "diff":
        return f"{v:+.2f}"
    if kind == "epochs":
        return f"{v:g}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def ours_settings(df: pd.DataFrame) -> str:
    """What all our runs of a table or figure have in common: |Z|, M, epochs, seeds (ones that vary are left out)."""
    got = df[df["run"].fillna("") != ""] if "run" in df else df[df["series"].str.startswith("ours")]
    parts = []
    seed = "seeds" if "seeds" in got else "seed"  # a row repeated over seeds has other seeds than the rest
    for col, label, kind in (("num_states", "|Z| = ", ""), ("num_clusters", "M = ", ""),
                             ("epochs", "epochs ", "epochs"), (seed, "seed ", "")):
        values = set(got[col].dropna()) if col in got else set()
        if len(values) == 1:
            parts.append(label + fmt(values.pop(), kind))
    return ", ".join(parts)


def title_lines(caption: str, df: pd.DataFrame, label: str | None) -> list[str]:
    """The paper's caption with its settings marked as the paper's, what ours have in common, the profile.

    Only a caption that states settings common to its rows ("(lambda = 0.5, M = 128)") gets ours beside it."""
    settings = re.search(r"\(([^()]*=[^()]*)\)", caption)
    common = settings is not None and ours_settings(df)
    title = caption[:settings.start()] + f"(paper: {settings.group(1)})" + caption[settings.end():] if settings \
        else caption
    return [title, f"ours: {common}" if common else "ours: settings per row (|Z|, M, epochs: ours over the paper's)",
            f"[{label}]" if label else "[full configuration: the paper's sizes]"]


STATUS_COLORS = {"measured": "#ffffff", "cut short": "#fde9c9", "incomplete": "#fde9c9", "not run": "#e6e6e6",
                 "cited": "#e3eefa", "reference": "#e4f3e4", "stale": "#f8d7da"}


INTERVAL_NOTE = (
    "Noise: ours = the mean over n seeds (\u00b1 their standard deviation where n > 1); [lo, hi] = our 95 % interval: "
    f"{intervals.METHOD}.  Verdict: \"in interval\" where the paper's number lies inside it, else by how much it "
    "lies outside, in % of the paper's number (*_beyond_pct); the \u00b13 % count stays beside it.")


def table_foot(name: str, paper: dict, df: pd.DataFrame, form: str = "png") -> list[str]:
    """The notes under a table (``form``: png or html): how to read it, the paper's notes, where results come from."""
    foot = ["Each cell: ours (black) over the paper's (grey); \u0394 = ours \u2212 paper in % (green: within "
            f"\u00b1{WITHIN_PCT:g} %) over the absolute difference; \u2013 = not measured / not reported (nothing is "
            "filled in). |Z| / M and epochs: our run's over the paper's (the full config's run for the same row)."
            if form == "png" else
            "*_diff = ours \u2212 paper, *_diff_pct = the same in % of the paper's (green: within "
            f"\u00b1{WITHIN_PCT:g} %); paper_num_states, paper_num_clusters, paper_epochs: the paper's setting (the "
            "full config's run for the same row; Table 3: the paper's own columns); epochs: trained (fractional "
            "if cut short); \u2013 = not measured / not reported (nothing is filled in)."]
    foot.append(INTERVAL_NOTE)
    foot += [f"Note ({k}): {v}" for k, v in (paper[name].get("notes") or {}).items()]
    foot.append(provenance_line(df))
    foot.append(f"Paper values: {paper.get('source', '')}." + ("  All columns (commit, date, seed, steps per row): "
                "the sortable table and the CSV of the same name." if form == "png" else ""))
    return foot


def uniform_note(stats_files: list[str]) -> list[str]:
    """For scale: a uniform model's perplexity is the vocabulary size (of this profile's data)."""
    sizes = []
    for path in stats_files:
        stats = load_json(Path(path))
        if stats and stats.get("vocab_size"):
            sizes.append(f"{Path(path).parent.name} {stats['vocab_size']:,}")
    return [f"For scale: a uniform model's perplexity is the vocabulary size: {', '.join(sizes)} (the data "
            "these runs train on)."] if sizes else []


def provenance_line(df: pd.DataFrame) -> str:
    got = df.dropna(subset=["commit"]) if "commit" in df else df.iloc[0:0]
    if got.empty:
        return "No result of ours in this table yet."
    commits = ", ".join(sorted(set(got["commit"].astype(str))))
    dates = sorted(str(d)[:10] for d in got["date"].dropna())
    when = dates[0] if dates and dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}" if dates else "?"
    devices = ", ".join(sorted(set(got["device"].dropna().astype(str))))
    ns = sorted({int(v) for v in got["n"].dropna()}) if "n" in got else []
    seeds = ("seeds per row: n = " + ", ".join(map(str, ns))) if ns else "no seeds"
    return f"Our results: {len(got)} row(s), trained at commit {commits}, {when}, on {devices or '?'}; {seeds}."


