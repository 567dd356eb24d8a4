"""The report's front page: what was reproduced, at a glance, from the tables' and figures' CSVs.

Written as reStructuredText for Snakemake's ``report:`` directive (the landing page of
``snakemake --report``): the paper, the commit, the profile, the hardware, the date; our settings
beside the paper's; per table and figure one verdict line counted from its ``status`` column
(measured / reference / cut short / incomplete / stale / not run / cited) and how many of our
rows lie within +-3 % of the paper and how many have the paper's number inside our 95 % interval;
how the intervals were made.  Every number on it is counted from
the CSVs, so a test can count them again.

    python -m pipeline.reporting.frontpage --tables results/table1.csv ... results/fig4.csv --paper config/paper.yaml \
        [--profile tiny] [--label "..."] [--curves N] --out results/frontpage.rst
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from pipeline import intervals
from pipeline.reporting.fidelity import default_of
from pipeline.provenance import provenance
from pipeline.reporting.runs import STATUS_KINDS, status_kind
from pipeline.reporting.text import WITHIN_PCT, fmt

ITEMS = ("table1", "table2", "table3", "table4", "fig3", "fig4")
PAPER_URL = "https://aclanthology.org/2020.emnlp-main.103/"


def rst(text: str) -> str:
    """Plain text safe in reStructuredText (``|Z|`` would be a substitution, ``*`` emphasis)."""
    return "".join("\\" + c if c in "\\|*`_" else c for c in str(text))


def read_csv(path: str | Path) -> pd.DataFrame:
    # keep_default_na=False: "None" is a Table 3 constraint, not a missing value
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def ours(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """The rows a verdict counts: every table row; a figure's points of ours (not the paper's)."""
    return df if name.startswith("table") else df[df["series"].str.startswith("ours")]


def row_pcts(row: pd.Series, kind: str = "_diff_pct") -> list[float]:
    """The row's differences to the paper in % (``_beyond_pct``: beyond our interval, 0 inside it)."""
    return [float(row[c]) for c in row.index if c.endswith(kind) and pd.notna(row[c])]


def summarize(name: str, df: pd.DataFrame) -> dict:
    """Counts of a table or figure: rows by status kind, rows compared with the paper, rows within +-3 %."""
    rows = ours(name, df)
    kinds = Counter(status_kind(s) for s in rows["status"])
    pcts = [row_pcts(r) for _, r in rows.iterrows()]
    compared = [p for p in pcts if p]
    beyond = [p for p in (row_pcts(r, "_beyond_pct") for _, r in rows.iterrows()) if p]
    outside = [v for p in beyond for v in p if v != 0]
    return {"rows": len(rows), "kinds": kinds, "compared": len(compared),
            "within": sum(all(abs(v) <= WITHIN_PCT for v in p) for p in compared),
            "median_pct": statistics.median(v for p in compared for v in p) if compared else None,
            "intervals": len(beyond), "inside": sum(all(v == 0 for v in p) for p in beyond),
            "median_beyond": statistics.median(outside) if outside else None,
            "paper_points": 0 if name.startswith("table") else int(df["series"].str.startswith("paper").sum())}


def counts_text(kinds: Counter) -> str:
    """``8 measured, 4 cited``: measured always, the other kinds where there are any, in a fixed order."""
    parts = [f"{kinds.get(k, 0)} {k}" for k in STATUS_KINDS if k == "measured" or kinds.get(k)]
    parts += [f"{n} other" for k, n in kinds.items() if k not in STATUS_KINDS]
    return ", ".join(parts)


def verdict_line(name: str, caption: str, s: dict) -> str:
    """One line per table / figure, e.g. ``Table 1: 12 rows: 8 measured, 4 cited; within +-3 % of the paper: 0 of 8``."""
    head, _, about = caption.partition(": ")
    unit = "rows" if name.startswith("table") else "points of ours"
    line = f"**{head}** ({about.split(' (')[0]}): {s['rows']} {unit}: {counts_text(s['kinds'])}"
    if not name.startswith("table"):
        line += f"; {s['paper_points']} paper points"
    where = "" if name.startswith("table") else " at the paper's x"
    line += f"; within \u00b1{WITHIN_PCT:g} % of the paper{where}: {s['within']} of {s['compared']} compared"
    if s["median_pct"] is not None:
        line += f" (median difference {s['median_pct']:+.1f} %)"
    line += f"; the paper's number inside our 95 % interval: {s['inside']} of {s['intervals']}"
    if s["median_beyond"] is not None:
        line += f" (the others differ by a median {s['median_beyond']:+.1f} % beyond the noise)"
    return line + "."


def _span(values) -> str:
    vals = sorted({v for v in values if pd.notna(v)})
    if not vals:
        return "\u2013"
    shown = [fmt(v, "epochs") for v in vals]
    return ", ".join(shown) if len(vals) <= 5 else f"{shown[0]} \u2013 {shown[-1]} ({len(vals)} sizes)"


def settings_rows(frames: dict[str, pd.DataFrame]) -> list[tuple[str, str, str]]:
    """(setting, the paper's, ours) over every table: |Z|, M, epochs, seed, devices."""
    tables = [df for name, df in frames.items() if name.startswith("table")]
    figs = [ours(name, df) for name, df in frames.items() if not name.startswith("table")]
    allrows = pd.concat(tables + figs, ignore_index=True) if tables or figs else pd.DataFrame(columns=["status"])
    tables_rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    measured = allrows[allrows["status"].map(status_kind).isin({"measured", "reference", "cut short", "incomplete"})]

    def col(df: pd.DataFrame, c: str) -> list:
        return list(df[c]) if c in df else []

    paper_devices = sorted({str(d) for df in tables for d in col(df, "paper_device") if pd.notna(d)})
    return [
        ("VLNHMM states |Z| (tables)", _span(col(tables_rows, "paper_num_states")),
         _span(col(tables_rows, "num_states"))),
        ("Brown blocks M (tables)", _span(col(tables_rows, "paper_num_clusters")), _span(col(tables_rows, "num_clusters"))),
        ("epochs (trained)", _span(col(allrows, "paper_epochs")), _span(col(measured, "epochs"))),
        ("seed", "not reported", _span(col(measured, "seed"))),
        ("devices", ", ".join(paper_devices) + " (timings)" if paper_devices else "\u2013",
         devices_text(d for d in col(measured, "device") if pd.notna(d)) or "\u2013"),
    ]


def this_machine() -> str:
    """CPU model, cores and GPUs of the machine the front page was written on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = "no GPU (nvidia-smi finds none)"
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            gpus = "; ".join(line.split(" (UUID")[0] for line in out.stdout.strip().splitlines())
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {gpus}"


def _rst_table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> list[str]:
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [head, *rows]:
        out.append(f"   * - {row[0]}")
        out += [f"     - {c}" for c in row[1:]]
    return out + [""]


# Paper text vs released code (harvardnlp/hmm-lm at f52e860, scripts/hmm_commands.sh): (the fidelity switch that
# measures it, what, the paper's text, the released code, the settings whose defaults are ours)
RECIPE_ROWS = [
    ("init", "initialization", "Kaiming uniform for all weights",
     "PyTorch's defaults: state embeddings N(0, 1), linear layers U(+-1/sqrt(fan_in)), word bias nonzero", ("init",)),
    ("eos-reset-off", "<eos> reset", "silent",
     "--reset_eos 1: in training only, inside a window only (not at window boundaries, never at evaluation)",
     ("eos_reset",)),
    ("lr-decay", "lr decay", "x1/4 after 8 checks without improvement, 4 checks per epoch",
     "x1/4, patience 4, max mode on the summed valid log-likelihood (relative threshold 1e-4: a slightly worse "
     "value counts as an improvement); checks at 1/3, 2/3, 3/3 of the epoch and at its end",
     ("plateau", "patience", "check_points")),
    ("test-weights", "model tested", "silent", "the last weights", ("test_weights",)),
    ("clusters", "Brown clusters", "wcluster, 128 clusters",
     "the files shipped in clusters/lm-M/paths (w2flm-M: WikiText-2); <eos> and <pad> in the last cluster",
     ("clusters",)),
    ("released recipe (all)", "all of the above", "as above", "--config recipe=released-code", ()),
]


def effect(fidelity: pd.DataFrame | None, switch: str) -> str:
    """The measured effect of a fidelity switch, from results/fidelity.csv."""
    if fidelity is None:
        return "not measured (results/fidelity.csv)"
    rows = fidelity[fidelity["switch"] == switch]
    if rows.empty or pd.isna(rows.iloc[0]["difference"]):
        return "not measured yet"
    r = rows.iloc[0]
    spread = {"yes": "exceeds the seed spread", "no": "within the seed spread"}.get(r["exceeds_seed_spread"],
                                                                                  "spread unknown")
    switched = "" if switch.startswith("released") else f"; {r['switched_value']}"
    return (f"{r['difference']:+.1f} valid ppl ({r['default_ppl_mean']:.1f} to {r['switched_ppl_mean']:.1f}"
            f"{switched}; n {r['default_n']} / {r['switched_n']}; {spread})")


def recipe_section(fidelity: pd.DataFrame | None) -> list[str]:
    lines = ["Paper text vs released code", "---------------------------", "",
             "Where the paper's text and the authors' released code differ, each difference is a setting; the "
             "default recipe follows the text, and the released run command where the text is silent.  "
             "``--config recipe=released-code`` sets them all as released (results under results/released-code/).  "
             "Measured effect: results/fidelity.csv (valid perplexity, switched alone on the default recipe, mean "
             "over seeds).", ""]
    rows = [(rst(label), rst(paper), rst(released),
             rst(", ".join(f"{k}: {default_of(k)}" for k in names)) or "--config recipe=paper-text (default)",
             rst(effect(fidelity, switch))) for switch, label, paper, released, names in RECIPE_ROWS]
    return lines + _rst_table(rows, ("setting", "paper text", "released code", "ours (default)", "measured effect"))


# Widen the landing page's text and put the rule graph under it; let a long page scroll from its top.
STYLE = """.. raw:: html

   <style>
   .prose.max-w-lg { max-width: 62rem !important; }
   .prose h1 { font-size: 1.15rem !important; margin: 0.8rem 0 0.3rem !important; }
   .prose h1.title { font-size: 1.45rem !important; margin: 0 0 0.5rem !important; }
   .prose p, .prose .line-block { margin: 0.35rem 0 !important; } .prose li { margin: 0.1rem 0 !important; }
   .prose table { font-size: 0.8rem; margin: 0.3rem 0 !important; }
   .prose td, .prose th { padding: 0.1rem 0.5rem !important; }
   div.grow.flex.gap-3.p-3.items-start { flex-direction: column; }
   div.grow.flex.items-center.justify-center.h-screen { align-items: flex-start; }
   </style>
"""


def devices_text(devices) -> str:
    """Each machine once, with the training precisions its runs used: "AMD EPYC (...) (bf16, fp32 training)"
    (a device is "<machine>" or "<machine>; <precision> training")."""
    machines: dict[str, set[str]] = {}
    for device in devices:
        machine, _, trained = str(device).partition("; ")
        machines.setdefault(machine, set()).update([trained.removesuffix(" training")] if trained else [])
    return ", ".join(m + (f" ({', '.join(sorted(p))} training)" if p else "") for m, p in sorted(machines.items()))


def render(frames: dict[str, pd.DataFrame], paper: dict, profile: str | None, label: str | None,
           commit: str | None = None, machine: str | None = None, now: str | None = None, curves: int = 1,
           fidelity: pd.DataFrame | None = None) -> str:
    """The front page (reStructuredText); ``curves``: how many training curves the report has;
    ``fidelity``: results/fidelity.csv where it exists."""
    commit = commit or provenance()["commit"]
    machine = machine or this_machine()
    now = now or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summaries = {name: summarize(name, df) for name, df in frames.items()}
    allrows = pd.concat([ours(n, df) for n, df in frames.items()], ignore_index=True)
    got = allrows.dropna(subset=["commit"]) if "commit" in allrows else allrows.iloc[0:0]
    trained = ", ".join(sorted(set(got["commit"].astype(str)))) or "none yet"
    dates = sorted(str(d)[:10] for d in got["date"].dropna()) if len(got) else []
    devices = devices_text(got["device"].dropna().astype(str)) if len(got) else ""
    devices = devices or "none yet"
    by_run: dict[str, list[float]] = {}
    beyond_by_run: dict[str, list[float]] = {}
    for name, df in frames.items():
        key = "run" if name.startswith("table") else "source"
        for _, r in ours(name, df).iterrows():
            if pd.notna(r[key]) and r[key] and status_kind(r["status"]) != "not run":
                by_run.setdefault(str(r[key]), []).extend(row_pcts(r))
                beyond_by_run.setdefault(str(r[key]), []).extend(row_pcts(r, "_beyond_pct"))
    compared = {k: p for k, p in by_run.items() if p}
    within = sum(all(abs(v) <= WITHIN_PCT for v in p) for p in compared.values())
    with_interval = {k: p for k, p in beyond_by_run.items() if p}
    inside = sum(all(v == 0 for v in p) for p in with_interval.values())
    every_seed = [int(float(v)) for text in (got["seeds"].dropna() if "seeds" in got else []) for v in str(text).split(",")]
    seeds = _span(every_seed or (got["seed"] if "seed" in got else []))
    profile_text = f"``{profile}``" + (f": {rst(label)}" if label else "") if profile and profile != "full" else \
        "full configuration (``config/config.yaml``: the paper's sizes)" + (f"; {rst(label)}" if label else "")
    title = "Scaling Hidden Markov Language Models: reproduction report"
    lines = [title, "=" * len(title), "", STYLE,
             f"| **Paper**: {rst(paper.get('source', ''))} (`ACL Anthology <{PAPER_URL}>`__)",
             f"| **Profile**: {profile_text}",
             f"| **Commit**: ``{commit}`` (this page); results trained at ``{trained}``",
             f"| **Hardware**: this page was written on {rst(machine)}; results on {rst(devices)}",
             f"| **Date**: {now}" + (f"; results from {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")
                                     if dates else ""), "",
             "Verdict", "-------", "",
             f"**{within} of {len(compared)}** runs of ours that the paper reports a number for are within "
             f"\u00b1{WITHIN_PCT:g} % of it (every such number of the run: valid and test perplexity); "
             f"**{inside} of {len(with_interval)}** with an interval have the paper's every number inside our 95 % "
             "interval (see How sure).", ""]
    for name in ITEMS:
        if name in frames:
            s = summaries[name]
            lines.append(f"- {verdict_line(name, rst(paper[name]['caption']), s)}  "
                         f"`{name}.png`_ \u00b7 `{name}.html`_")
    seeds = f"seeds {seeds}" if seeds != "\u2013" else "no trained model measured yet; KenLM needs no seed"
    ns = sorted({int(v) for v in got["n"].dropna()}) if "n" in got else []
    repeats = (f"Our rows are repeated over n = {', '.join(map(str, ns))} seed(s) ({seeds}): a row shows their "
               "mean, standard deviation and n" if ns else f"No row of ours yet ({seeds})")
    lines += ["", f"**How sure.** The paper reports single runs without a spread.  {repeats}.  Each perplexity of "
              f"ours has a {rst(intervals.METHOD)}.  A row agrees with the paper where the paper's number lies "
              "inside that interval; otherwise it differs by the distance to the interval's nearer end, in % of the "
              "paper's number (beyond the noise we measured: test-set sampling and, with n > 1, seeds).", ""]
    if profile and profile != "full":
        lines += [f"**Not comparable.** This is the ``{profile}`` profile: {rst(label or 'a scaled-down configuration')}.  "
                  "Its numbers check that the pipeline runs end to end; they are not evidence for or against the "
                  "paper.  Figures plot our runs at the paper-equivalent size.", ""]
    notes = [f"- {rst(paper[n]['caption'].split(':')[0])} ({rst(k)}): {rst(' '.join(str(v).split()))}"
             for n in ITEMS if n in frames for k, v in (paper[n].get("notes") or {}).items()]
    if notes:
        lines += ["**Notes of the tables**", "", *notes, ""]
    lines += ["Our settings beside the paper's", "-------------------------------", ""]
    lines += _rst_table([tuple(map(rst, r)) for r in settings_rows(frames)],
                        ("setting", "paper (its text; config/config.yaml)", f"ours ({profile or 'full'})"))
    lines += recipe_section(fidelity)
    lines += ["How to read the tables", "----------------------", "",
              "`Tables`_ and `Figures`_ hold each table and figure three ways: the image (each cell ours over the "
              "paper's), a sortable table with every column (click a heading), and the CSV.  Each row names our run, "
              "its \\|Z\\|, M, epochs, steps and seed beside the paper's setting, the difference absolute and in %, and "
              "the commit and date of the result.  " + (
                  "`Training curves`_ show every trained run's validation curve with the paper's number as a line."
                  if curves else "No training curves: no model is trained in this configuration's DAG."), "",
              "Status of a row: **measured** (this pipeline trained it to the end); **reference** (a committed run "
              "from another machine, results/reference/); **cut short** (stopped by max_steps or max_seconds); "
              "**incomplete** (still training: provisional numbers); **stale** (trained with other settings: "
              "not shown); **not run** (e.g. needs a GPU); **cited** (the paper copied the row from other work).", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.reporting.frontpage", description=__doc__.split("\n")[0])
    p.add_argument("--tables", nargs="+", required=True, help="the tables' and figures' CSVs (named table1.csv, ...)")
    p.add_argument("--paper", required=True)
    p.add_argument("--profile")
    p.add_argument("--label")
    p.add_argument("--curves", type=int, default=1, help="how many training curves the report has (0: no link)")
    p.add_argument("--fidelity", help="results/fidelity.csv, for the measured effects (where it exists)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    paper = yaml.safe_load(Path(a.paper).read_text())
    frames = {Path(t).stem: read_csv(t) for t in a.tables}
    frames = {n: frames[n] for n in ITEMS if n in frames}
    fidelity = read_csv(a.fidelity) if a.fidelity else None
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(render(frames, paper, a.profile, a.label, curves=a.curves, fidelity=fidelity))


if __name__ == "__main__":
    main()
