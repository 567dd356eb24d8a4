"""The PNG forms: a compact table (each cell ours over the paper's) and a figure (ours at the
paper-equivalent x, the paper's table values hollow)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from pipeline.reporting.runs import status_kind  # noqa: E402
from pipeline.reporting.text import (FIGURE_NOTE, INTERVAL_NOTE, STATUS_COLORS, WITHIN_PCT, fmt, missing,  # noqa: E402
                                     pow2, provenance_line)

# ---------------------------------------------------------------------------------- PNG: tables
INK, PAPER_INK, GOOD, RUN_INK = "#111111", "#6b6b6b", "#1a7f37", "#2f5f8f"  # RUN_INK: our run's key


def _pair(ours: Any, paper: Any, kind: str = "") -> list[tuple[str, str]]:
    """A cell of two lines: ours (black) over the paper's (grey, as the paper prints it)."""
    shown = paper if isinstance(paper, str) else fmt(paper, kind) if kind or missing(paper) else f"{paper:g}"
    return [(fmt(ours, kind), INK), (shown, PAPER_INK)]


def _ppl_cell(row: Any, split: str) -> list[tuple[str, str]]:
    """Ours (mean +- sd over n seeds), our 95 % interval, the paper's."""
    ours, sd, n = row.get(f"{split}_ppl"), row.get(f"{split}_sd"), row.get("n")
    lo, hi = row.get(f"{split}_lo"), row.get(f"{split}_hi")
    if missing(ours):
        return _pair(ours, row.get(f"paper_{split}_ppl"))
    head = fmt(ours) + ("" if missing(sd) else f" \u00b1 {sd:.2f}") + ("" if missing(n) else f" (n = {n})")
    span = "[\u2013]" if missing(lo) else f"[{lo:.2f}, {hi:.2f}]"
    return [(head, INK), (span, RUN_INK)] + _pair(ours, row.get(f"paper_{split}_ppl"))[1:]


def verdict_text(beyond: Any) -> str:
    """``in interval`` / ``+4.2 % beyond`` / ``no interval`` (a row's ``*_beyond_pct``)."""
    if missing(beyond):
        return "no interval"
    return "in interval" if beyond == 0 else f"{beyond:+.1f} % beyond"


def _diff_cell(row: Any, split: str) -> list[tuple[str, str]]:
    pct, diff = row.get(f"{split}_diff_pct"), row.get(f"{split}_diff")
    if missing(pct):
        return [("\u2013", INK)]
    color = GOOD if abs(pct) <= WITHIN_PCT else INK
    beyond = row.get(f"{split}_beyond_pct")
    return [(fmt(pct, "pct"), color), (fmt(diff, "diff"), PAPER_INK),
            (verdict_text(beyond), GOOD if beyond == 0 else INK)]


def _status_cell(status: str, notes: list[str]) -> list[tuple[str, str]]:
    kind = status_kind(status)
    detail = status[len(kind):].lstrip(": ").strip() if kind != "other" else status
    if not detail:
        return [(kind, INK)]
    if kind == "cited" or len(detail) <= 22:
        return [(kind, INK), (detail, PAPER_INK)]
    if status not in notes:
        notes.append(status)
    return [(kind, INK), (f"note [{notes.index(status) + 1}]", PAPER_INK)]


def table_cells(name: str, df: pd.DataFrame) -> tuple[list[str], list[list[list[tuple[str, str]]]], list[str]]:
    """The PNG's compact view: headers, cells (lines of (text, colour)), and the long statuses as notes."""
    notes: list[str] = []
    heads = {"table1": ["data", "paper's model", "our run", "|Z| / M", "epochs", "params", "valid ppl",
                        "valid \u0394", "test ppl", "test \u0394", "status"],
             "table3": ["paper's setting", "our run", "|Z| / M", "states/word", "epochs", "valid ppl", "valid \u0394",
                        "status"]}.get(name, ["paper's model", "our run", "|Z| / M", "epochs", "params", "train ppl",
                                              "valid ppl", "valid \u0394", "ms/batch", "status"])
    rows = []
    for _, r in df.iterrows():
        r = r.to_dict()
        zm = [(f"{fmt(r['num_states'])} / {fmt(r['num_clusters'])}" if not missing(r["num_states"]) else "\u2013",
               INK), (f"{pow2(r['paper_num_states'])} / {fmt(r['paper_num_clusters'])}"
                      if not missing(r["paper_num_states"]) else "\u2013", PAPER_INK)]
        ours_run = [(r["model"] or "\u2013", INK)] + ([(r["run"], RUN_INK)] if r["run"] else [])
        cells = {"data": [(str(r.get("dataset") or ""), INK)], "paper's model": [(str(r["paper_model"]), INK)],
                 "paper's setting": [(str(r["paper_model"]), INK)], "our run": ours_run, "|Z| / M": zm,
                 "epochs": _pair(r["epochs"], r["paper_epochs"], "epochs"),
                 "states/word": _pair(r.get("states_per_word"), r.get("paper_states_per_word")),
                 "params": _pair(r.get("params"), r.get("paper_params"), "params"),
                 "train ppl": _pair(r.get("train_ppl"), r.get("paper_train_ppl")),
                 "valid ppl": _ppl_cell(r, "valid"), "valid \u0394": _diff_cell(r, "valid"),
                 "test ppl": _ppl_cell(r, "test"), "test \u0394": _diff_cell(r, "test"),
                 "ms/batch": _pair(r.get("ms_per_batch"), r.get("paper_ms_per_batch")),
                 "status": _status_cell(str(r["status"]), notes)}
        if r["status"].startswith("cited"):
            cells["our run"] = [("(no run: cited)", PAPER_INK)]
        rows.append([cells[h] for h in heads])
    devices = sorted({str(d) for d in df.get("paper_device", pd.Series(dtype=object)).dropna()})
    if devices:  # whose timings the paper's grey numbers are
        heads = [f"ms/batch (paper: {', '.join(devices)})" if h == "ms/batch" else h for h in heads]
    return heads, rows, notes


def _width_in(text: str, fontsize: float, bold: bool = False) -> float:
    """The width of ``text`` as matplotlib draws it, inches."""
    prop = FontProperties(size=fontsize, weight="bold" if bold else "normal")
    return TextToPath().get_text_width_height_descent(text, prop, ismath=False)[0] / 72


def render_table(name: str, df: pd.DataFrame, title: list[str], foot: list[str], png: str | Path) -> None:
    """A compact table: each cell ours over the paper's (grey); differences in % over absolute."""
    heads, rows, notes = table_cells(name, df)
    foot = [f"[{i}] {n}" for i, n in enumerate(notes, 1)] + foot
    fs, hfs = 9.0, 9.0
    lh = fs / 72 * 1.32
    widths = [max(_width_in(h, hfs, bold=True), *(_width_in(t, fs) for row in rows for t, _ in row[i])) + 0.25
              for i, h in enumerate(heads)]
    width = max(sum(widths) + 0.3, 8.0)
    foot = [textwrap.fill(f, int((width - 0.3) / (8.0 / 72 * 0.55))) for f in foot]
    foot_h = sum(f.count("\n") + 1 for f in foot) * 8.0 / 72 * 1.3 + 0.15
    heights = [max(len(c) for c in row) * lh + 0.1 for row in rows]
    head_h, title_h = lh * 1.2 + 0.1, len(title) * 11 / 72 * 1.35 + 0.15
    height = title_h + head_h + sum(heights) + foot_h + 0.2
    fig = plt.figure(figsize=(width, height))
    to_x, to_y = (lambda inch: inch / width), (lambda inch: 1 - inch / height)
    for i, line in enumerate(title):
        fig.text(0.5, to_y(0.12 + i * 11 / 72 * 1.35), line, ha="center", va="top",
                 fontsize=11 if i == 0 else 9.5, weight="bold" if i == 0 else "normal",
                 color=INK if i < 2 else "#8a4b00")
    top, left = title_h, (width - sum(widths)) / 2
    x_at = [left + sum(widths[:i]) for i in range(len(widths) + 1)]
    fig.patches.append(plt.Rectangle((to_x(left), to_y(top + head_h)), to_x(sum(widths)), head_h / height,
                                     transform=fig.transFigure, color="#d9d9d9", zorder=0))
    for i, h in enumerate(heads):
        fig.text(to_x(x_at[i] + 0.08), to_y(top + head_h / 2), h, va="center", fontsize=hfs, weight="bold")
    y = top + head_h
    status_col = heads.index("status")
    for k, (row, h) in enumerate(zip(rows, heights)):
        kind = status_kind(df.iloc[k]["status"])
        band = "#f5f5f5" if k % 2 else "#ffffff"
        fig.patches.append(plt.Rectangle((to_x(left), to_y(y + h)), to_x(sum(widths)), h / height,
                                         transform=fig.transFigure, color=band, zorder=0))
        fig.patches.append(plt.Rectangle((to_x(x_at[status_col]), to_y(y + h)), to_x(widths[status_col]), h / height,
                                         transform=fig.transFigure, color=STATUS_COLORS.get(kind, band), zorder=0))
        for i, cell in enumerate(row):
            for j, (text, color) in enumerate(cell):
                fig.text(to_x(x_at[i] + 0.08), to_y(y + 0.05 + j * lh), text, va="top", fontsize=fs, color=color,
                         style="italic" if color == RUN_INK else "normal")
        y += h
    fig.add_artist(plt.Line2D([to_x(left), to_x(left + sum(widths))], [to_y(y)] * 2, color="#999999", lw=0.8))
    fig.text(to_x(0.15), to_y(y + 0.12), "\n".join(foot), va="top", fontsize=8.0, color="#333333")
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)



# ---------------------------------------------------------------------------------- PNG: figures
def _ticks(values: list[float], name: str) -> list[str]:
    """One style per axis: powers of two as 2^k for |Z| (the paper's notation), plain numbers for M."""
    return [f"$2^{{{int(v).bit_length() - 1}}}$" if name == "num_states" and int(v) & (int(v) - 1) == 0 else
            f"{int(v)}" for v in values]


def _series_kind(series: str) -> str:
    """``ours factored`` / ``paper factored (table values)`` -> ``factored``; ``ours`` -> ``""``."""
    return series.replace("(table values)", "").split(" ", 1)[1].strip() if " " in series.strip() else ""


def render_figure(df: pd.DataFrame, name: str, paper: dict, title: list[str], scale: dict | None,
                  png: str | Path, extra: list[str] = ()) -> None:
    """Ours at the paper-equivalent x (a second axis gives our own x), the paper's table values hollow.

    Series (Figure 4: independent / factored) are set apart a little on x so that markers at the
    same x never hide each other; each paper point is labelled with its value; our points trained
    for other epochs than most are labelled with theirs.
    """
    xkey = paper[name]["x"]
    factor = (scale or {}).get(xkey) or 1
    fig = plt.figure(figsize=(10, 6.6))
    ax = fig.add_axes((0.08, 0.27, 0.6, 0.5 if factor != 1 else 0.56))
    kinds = sorted({_series_kind(s) for s in df.series})
    dodge = {k: 1.0 if len(kinds) == 1 else 0.94 + 0.12 * i / (len(kinds) - 1) for i, k in enumerate(kinds)}
    ours = df[df.series.str.startswith("ours")]
    modal = ours.epochs.dropna().mode()
    modal = float(modal.iloc[0]) if len(modal) else None
    for i, kind in enumerate(kinds):
        color, side = f"C{i}", -1 if i == 0 else 1
        mine = ours[ours.series.map(_series_kind) == kind]
        got = mine.dropna(subset=["valid_ppl"])
        xs, ys, kinds_of = got.x * dodge[kind], got.valid_ppl, got.status.map(status_kind)
        bars = got.dropna(subset=["valid_lo", "valid_hi"])
        ax.errorbar(bars.x * dodge[kind], bars.valid_ppl, yerr=[bars.valid_ppl - bars.valid_lo,
                    bars.valid_hi - bars.valid_ppl], fmt="none", ecolor=color, elinewidth=1.2, capsize=4, zorder=2)
        tags = (["hollow circle: cut short"] if kinds_of.eq("cut short").any() else []) + (
            ["incl. reference runs"] if kinds_of.eq("reference").any() else [])
        ax.plot(xs, ys, "-o", color=color, lw=1.6, ms=7, zorder=2,
                label="ours" + (f" {kind}" if kind else "") + "".join(f"\n  ({t})" for t in tags))
        cut = kinds_of.eq("cut short")
        ax.plot(xs[cut], ys[cut], "o", color=color, mfc="white", ms=7, zorder=3)
        for x, y, ep in zip(xs, ys, got.epochs):
            if modal is not None and not missing(ep) and abs(ep - modal) > 1e-6:
                ax.annotate(f"{ep:g} epochs", (x, y), textcoords="offset points", xytext=(0, -16), ha="center",
                            fontsize=8.5, color=color, weight="bold")
        for x in mine[mine.valid_ppl.isna()].x.dropna():  # in the bottom margin kept free below the data
            ax.annotate("not run", (x * dodge[kind], 0.02 + 0.05 * i), xycoords=("data", "axes fraction"),
                        ha="center", fontsize=8, color=color)
        pts = df[df.series.str.startswith("paper") & (df.series.map(_series_kind) == kind)].dropna(
            subset=["paper_valid_ppl"])
        ax.plot(pts.x * dodge[kind], pts.paper_valid_ppl, "s", ms=10, mfc="none", mew=1.8, color=color, zorder=4,
                label="paper" + (f" {kind}" if kind else "") + " (its tables)")
        for x, ys_at in pts.groupby(pts.x * dodge[kind], sort=True).paper_valid_ppl:  # two values at one x: "134 / 136"
            ax.annotate(" / ".join(f"{y:g}" for y in ys_at), (x, ys_at.mean()), textcoords="offset points",
                        xytext=(10 * side, 0), va="center", ha="right" if side < 0 else "left", fontsize=8.5,
                        color=color)
    xs = sorted(set(df.x.dropna()))
    what = {"num_states": "number of states |Z|", "num_clusters": "number of blocks M"}.get(xkey, xkey)
    if xs:
        ax.set_xscale("log", base=2)
        ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels(_ticks(xs, xkey))
    if factor != 1 and xs:
        ax.set_xlabel(f"{what}, paper-equivalent (ours \u00d7 {factor:g}), log scale")
        top = ax.secondary_xaxis("top", functions=(lambda v: v / factor, lambda v: v * factor))
        top.xaxis.set_major_locator(FixedLocator([x / factor for x in xs]))
        top.xaxis.set_minor_locator(NullLocator())
        top.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter(_ticks([x / factor for x in xs], xkey)))
        top.set_xlabel(f"our {what} as trained", fontsize=9)
    else:
        ax.set_xlabel(f"{what} (log scale)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    if df.valid_ppl.dropna().empty and df.paper_valid_ppl.dropna().empty:
        ax.text(0.5, 0.5, "no values (not run)", transform=ax.transAxes, ha="center", color="gray")
    ax.set_ylabel("validation perplexity")
    ax.grid(alpha=0.3)
    ax.margins(y=0.25)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.03, 1), borderaxespad=0)
    for i, line in enumerate(title):
        fig.text(0.5, 0.98 - i * 0.04, line, ha="center", va="top", fontsize=11 if i == 0 else 9.5,
                 weight="bold" if i == 0 else "normal", color="#8a4b00" if i == 2 else INK)
    notes = [FIGURE_NOTE]
    if modal is not None:
        notes.append(f"Our points: {modal:g} epoch(s) each unless labelled; error bars: our 95 % interval.")
    notes.append(INTERVAL_NOTE)
    notes.append(provenance_line(ours) + f"  Source: {paper.get('source', '')}.")
    notes += list(extra)
    fig.text(0.01, 0.015, "\n".join(textwrap.fill(n, 150) for n in notes), fontsize=8, va="bottom", style="italic")
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


