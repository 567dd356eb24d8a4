"""The paper's tables and figures from run results, as CSV + PNG with the paper's numbers beside ours.

Every paper row (config/paper.yaml) appears, in paper order, whether or not a run filled it;
nothing is invented: a row without metrics has empty measured values and says why (``status``).
A run fills the rows named in its spec's ``rows`` (``tableN/<key>``; table 1 also matches the
run's dataset); ``fig3`` / ``fig4`` make it a point of that figure.  Metrics come from the run's
``metrics.json``; failing that from a reference directory of runs done elsewhere (status
``reference: ...`` with their provenance); failing that the row is ``not run``.  A result whose
recorded spec differs from the config's is never shown: the row says ``stale: ...`` and what differs.

    python -m pipeline.report table --name table1 --paper config/paper.yaml --runs '[{"name": "kn5", ...}]' \
        [--runs-dir results/runs] [--reference results/reference] [--not-run '{"ptb/vlnhmm-32768": "..."}'] \
        [--profile tiny] --csv results/table1.csv --png results/table1.png
    python -m pipeline.report figure --name fig3 ... (same options)
"""
from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import stale_reason  # noqa: E402

FIGURE_NOTE = "paper: only the points its tables report (hollow markers); no curve read off the plot"


def _ppl(split: str, paper_key: str) -> list[tuple[str, str]]:
    return [(f"{split}_ppl", f"ours.{split}_ppl"), (f"paper_{split}_ppl", f"paper.{paper_key}"),
            (f"{split}_diff", f"diff.{split}_ppl")]


# Per table: (CSV column, source).  ours.K: metrics[K]; paper.K: the paper row's K (table 1 rows
# carry their dataset); table.K: the table's K in paper.yaml; diff.C: column C - paper_C.
_TAIL = [("status", "status"), ("run", "run")]
_ABLATION = [("model", "paper.model"), ("params", "ours.params"), ("paper_params", "paper.params"),
             ("train_ppl", "ours.train_ppl"), ("paper_train_ppl", "paper.train"), *_ppl("valid", "valid"),
             ("ms_per_batch", "ours.eval_ms_per_batch"), ("ours_device", "ours.device_name"),
             ("paper_ms_per_batch", "paper.ms_per_batch"), ("paper_device", "table.time_device"), *_TAIL]
COLUMNS = {
    "table1": [("dataset", "paper.dataset"), ("model", "paper.model"), ("params", "ours.params"),
               ("paper_params", "paper.params"), *_ppl("valid", "valid"), *_ppl("test", "test"), *_TAIL],
    "table2": _ABLATION,
    "table3": [("constraint", "paper.constraint"), ("num_states", "paper.num_states"),
               ("states_per_word", "paper.states_per_word"), ("num_clusters", "paper.num_clusters"),
               *_ppl("valid", "valid"), *_TAIL],
    "table4": _ABLATION,
}
INT_COLUMNS = {"params", "num_states", "states_per_word", "num_clusters", "x"}
FLOAT_COLUMNS = {"train_ppl", "valid_ppl", "test_ppl", "ms_per_batch"}


# ---------------------------------------------------------------------------------- runs
def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_runs(specs: list[dict], runs_dir: str | Path, reference: str | Path | None = None,
              not_run: dict[str, str] | None = None) -> list[dict]:
    """One dict per run spec (the config's, as :meth:`Run.to_dict`): key, spec, metrics, status.

    Metrics come from ``runs_dir/<key>/metrics.json``, else from ``reference/<key>/``; a result
    trained from other settings than the spec's is not used (status ``stale: ...``).
    """
    runs = []
    for spec in specs:
        key = f"{spec['dataset']}/{spec['name']}"
        found = [(m, None) for m in [_read_json(Path(runs_dir) / key / "metrics.json")] if m is not None]
        if reference and (ref := _read_json(Path(reference) / key / "metrics.json")) is not None:
            prov = ref.get("provenance") or {}
            where = ", ".join(str(v) for v in (ref.get("device_name"), prov.get("date"),
                                               prov.get("commit") and f"commit {str(prov['commit'])[:10]}") if v)
            found.append((ref, f"reference: {ref.get('status') or 'status missing'} ({where})"))
        run = {"key": key, "spec": spec, "metrics": None, "status": (not_run or {}).get(key, "not run")}
        stale = []
        for metrics, status in found:
            reason = stale_reason(metrics.get("spec"), _result_spec(spec))
            if reason is None:
                run.update(metrics=metrics, status=status or metrics.get("status") or "status missing")
                break
            stale.append(reason if status is None else "stale reference " + reason.removeprefix("stale: "))
        else:
            if stale:
                run["status"] = stale[0]
        runs.append(run)
    return runs


def _result_spec(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "rows"}


def _run(run: Any) -> dict:
    """Accept dicts or objects with spec / metrics / status (key derived from the spec if absent).

    Metrics given without a status are checked against the spec (a stale result is not shown).
    """
    get = run.get if isinstance(run, dict) else lambda k, d=None: getattr(run, k, d)
    spec, metrics, status = get("spec"), get("metrics"), get("status")
    if metrics is not None and status is None:
        status = stale_reason(metrics.get("spec"), _result_spec(spec))
        metrics = None if status else metrics
        status = status or metrics.get("status")
    return {"key": get("key") or f"{spec['dataset']}/{spec['name']}", "spec": spec, "metrics": metrics,
            "status": status or "not run"}


# ---------------------------------------------------------------------------------- frames
def _finish(df: pd.DataFrame) -> pd.DataFrame:
    for col in df.columns:
        if col in INT_COLUMNS:
            df[col] = pd.to_numeric(df[col]).round().astype("Int64")
        elif col in FLOAT_COLUMNS or col.endswith("_diff") or (
                col.startswith("paper_") and col.endswith(("_ppl", "_ms_per_batch"))):
            df[col] = pd.to_numeric(df[col]).astype(float).round(2)
    return df


def build_table(name: str, paper: dict, runs: list) -> pd.DataFrame:
    """All paper rows of table `name` in paper order, each with the run that fills it (if any)."""
    table, runs = paper[name], [_run(r) for r in runs]
    rows = table["rows"]
    paper_rows = ([{**r, "dataset": ds} for ds, rs in rows.items() for r in rs] if isinstance(rows, dict)
                  else [dict(r) for r in rows])
    out = []
    for prow in paper_rows:
        run = None if prow.get("cited") else next(
            (r for r in runs if f"{name}/{prow['key']}" in r["spec"].get("rows", [])
             and prow.get("dataset", r["spec"]["dataset"]) == r["spec"]["dataset"]), None)
        metrics = (run or {}).get("metrics") or {}
        rec: dict[str, Any] = {}
        for col, src in COLUMNS[name]:
            kind, _, key = src.partition(".")
            if kind == "diff":
                ours, ref = rec[key], rec[f"paper_{key}"]
                rec[col] = None if ours is None or ref is None else round(round(ours, 2) - ref, 2)
            elif kind == "status":
                rec[col] = f"cited: {prow['cited']}" if prow.get("cited") else run["status"] if run else "not run"
            elif kind == "run":
                rec[col] = run["key"] if run else ""
            else:
                rec[col] = {"ours": metrics, "paper": prow, "table": table}[kind].get(key)
        out.append(rec)
    return _finish(pd.DataFrame(out, columns=[c for c, _ in COLUMNS[name]]))


def build_figure(name: str, paper: dict, runs: list) -> pd.DataFrame:
    """Long format: series, x, valid_ppl, status, source (our run key / the paper table)."""
    fig = paper[name]
    xkey, skey = fig["x"], fig.get("series")
    out = []
    for run in (r for r in map(_run, runs) if name in r["spec"].get("rows", [])):
        settings = run["spec"].get("settings") or {}
        out.append({"series": " ".join(["ours"] + ([str(settings.get(skey))] if skey else [])),
                    "x": settings.get(xkey), "valid_ppl": (run["metrics"] or {}).get("valid_ppl"),
                    "status": run["status"], "source": run["key"]})
    out.sort(key=lambda r: (r["series"], r["x"] or 0))
    for pt in fig["points"]:
        out.append({"series": " ".join(["paper"] + ([str(pt[skey])] if skey else []) + ["(table values)"]),
                    "x": pt[xkey], "valid_ppl": pt["valid"], "status": f"paper value ({pt['source']})",
                    "source": pt["source"]})
    return _finish(pd.DataFrame(out, columns=["series", "x", "valid_ppl", "status", "source"]))


# ---------------------------------------------------------------------------------- PNG
def _title(caption: str, profile: str | None) -> str:
    if not profile:
        return caption
    return caption + "\n" + textwrap.fill(f"[{profile}]", 90)


def _cell(col: str, v: Any) -> str:
    if v is None or v is pd.NA or isinstance(v, float) and math.isnan(v):
        return "\u2013"
    if col == "params":
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else str(v)
    if isinstance(v, float):
        return f"{v:g}" if col.startswith("paper_") else f"{v:+.2f}" if col.endswith("_diff") else f"{v:.2f}"
    return textwrap.fill(str(v), 40)


STATUS_COLORS = {"cut short": "#fde9c9", "not run": "#e6e6e6", "cited": "#e3eefa", "reference": "#e4f3e4"}


def render_table(df: pd.DataFrame, caption: str, notes: list[str], profile: str | None, png: str | Path) -> None:
    cells = [[_cell(c, v) for c, v in zip(df.columns, row)] for row in df.itertuples(index=False)]
    heads = [textwrap.fill(c.replace("_", " "), 10) for c in df.columns]
    widths = [max(len(line) for text in [h] + [r[i] for r in cells] for line in text.split("\n")) + 2
              for i, h in enumerate(heads)]
    lines = [max(t.count("\n") + 1 for t in r) for r in [heads] + cells]
    width_in = max(8.0, 0.085 * sum(widths))
    foot = [textwrap.fill(n, int(width_in * 15)) for n in notes]
    foot_lines, title_lines = sum(f.count("\n") + 1 for f in foot), caption.count("\n") + (2.6 if profile else 1.6)
    line_in = 0.2
    table_in = line_in * (sum(lines) + len(lines) * 0.6)
    height_in = table_in + line_in * (title_lines + foot_lines + 1.5)
    fig = plt.figure(figsize=(width_in, height_in))
    fig.text(0.5, 1 - 0.1 / height_in, _title(caption, profile), ha="center", va="top", fontsize=11,
             weight="bold")
    ax = fig.add_axes((0.01, (foot_lines * line_in + 0.5 * line_in) / height_in, 0.98, table_in / height_in))
    ax.axis("off")
    tbl = ax.table(cellText=cells, colLabels=heads, colWidths=[w / sum(widths) for w in widths],
                   cellLoc="center", bbox=(0, 0, 1, 1))
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(8.5)
    status_col = list(df.columns).index("status")
    for (r, c), cell in tbl.get_celld().items():
        cell.set_height(lines[r] + 0.6)
        if r == 0:
            cell.set_facecolor("#d9d9d9")
            cell.set_text_props(weight="bold")
        elif c == status_col:
            status = str(df.iloc[r - 1]["status"])
            cell.set_facecolor(next((col for k, col in STATUS_COLORS.items() if k in status), "white"))
    fig.text(0.01, 0.15 / height_in, "\n".join(foot), ha="left", va="bottom", fontsize=8)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130)
    plt.close(fig)


def render_figure(df: pd.DataFrame, name: str, paper: dict, profile: str | None, png: str | Path) -> None:
    spec = paper[name]
    fig, ax = plt.subplots(figsize=(10, 5.6))
    fig.subplots_adjust(left=0.08, right=0.66, bottom=0.2, top=0.86)
    colors: dict[str, str] = {}
    for series, grp in df.groupby("series", sort=False):
        key = series.replace("paper", "ours").replace(" (table values)", "")
        color = colors.setdefault(key, f"C{len(colors)}")
        got = grp.dropna(subset=["valid_ppl"])
        if series.startswith("paper"):
            ax.plot(got.x, got.valid_ppl, "s", ms=9, mfc="none", mew=1.8, color=color, label=series)
            continue
        missing = grp[grp.valid_ppl.isna()]
        tags = [t for t in ("cut short", "reference") if got.status.str.contains(t).any()]
        tags += [f"not run at {', '.join(str(int(x)) for x in missing.x)}"] if len(missing) else []
        ax.plot(got.x, got.valid_ppl, "-o", color=color, label=series + "".join(f"\n  ({t})" for t in tags))
        for x in missing.x:  # in the bottom margin kept free below the data
            ax.annotate("not run", (x, 0.015 + 0.045 * (len(colors) - 1)), xycoords=("data", "axes fraction"),
                        ha="center", fontsize=7, color=color)
    xs = sorted(df.x.dropna().unique())
    if xs:
        ax.set_xscale("log", base=2)
        ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
        ax.set_xticks(xs, [f"$2^{{{math.log2(x):g}}}$" if x >= 1024 else f"{x:g}" for x in xs])
    if df.valid_ppl.dropna().empty:
        ax.text(0.5, 0.5, "no values (not run)", transform=ax.transAxes, ha="center", color="gray")
    ax.set_xlabel({"num_states": "number of states |Z| (log2 scale)",
                   "num_clusters": "number of blocks M (log2 scale)"}.get(spec["x"], spec["x"]))
    ax.set_ylabel("validation perplexity")
    ax.set_title(_title(spec["caption"], profile), fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.text(0.01, 0.02, textwrap.fill(FIGURE_NOTE + ". " + f"Source: {paper.get('source', '')}.", 130),
             fontsize=8, style="italic")
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["table", "figure"])
    p.add_argument("--name", required=True)
    p.add_argument("--paper", required=True)
    p.add_argument("--runs", type=json.loads, default=[], help="JSON list of the runs' specs (Run.to_dict)")
    p.add_argument("--runs-dir", default="results/runs", help="where each run's metrics.json is")
    p.add_argument("--reference")
    p.add_argument("--not-run", default="{}", help="JSON mapping run key (dataset/name) -> reason")
    p.add_argument("--profile")
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    a = p.parse_args(argv)
    paper = yaml.safe_load(Path(a.paper).read_text())
    if a.name not in paper or (a.kind == "table") != (a.name in COLUMNS):
        p.error(f"no {a.kind} {a.name!r} in {a.paper}")
    runs = load_runs(a.runs, a.runs_dir, a.reference, json.loads(a.not_run))
    if a.kind == "table":
        df = build_table(a.name, paper, runs)
        notes = [f"Note ({k}): {v}" for k, v in (paper[a.name].get("notes") or {}).items()]
        notes.append("diff = ours \u2212 paper; \u2013 = not measured / not reported (nothing filled in). "
                     f"Paper values: {paper.get('source', '')}.")
        render_table(df, paper[a.name]["caption"], notes, a.profile, a.png)
    else:
        df = build_figure(a.name, paper, runs)
        render_figure(df, a.name, paper, a.profile, a.png)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()
