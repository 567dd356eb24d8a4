"""The paper's tables and figures from run results: CSV, PNG and a sortable HTML table, ours beside the paper's.

Every paper row (config/paper.yaml) appears, in paper order, whether or not a run filled it;
nothing is invented: a row without metrics has empty measured values and says why (``status``).
A run fills the rows named in its spec's ``rows`` (``tableN/<key>``; table 1 also matches the
run's dataset); ``fig3`` / ``fig4`` make it a point of that figure.  Metrics come from the run's
``metrics.json``; failing that from a reference directory of runs done elsewhere (status
``reference: ...`` with their provenance); failing that the row is ``not run``.  A result whose
recorded spec differs from the config's is never shown: the row says ``stale: ...`` and what differs.

Each row says what was trained beside what the paper trained: our |Z|, M, epochs, steps and seed
next to the paper's setting (the run of the full config, ``--paper-config``, that fills the same
row: its defaults are the paper's values), a model label naming our run, the difference to the
paper absolute and in %, the commit and date of the result and the profile.  Figures plot a
scaled profile's runs at the paper-equivalent x (``--scale``: our |Z| x 32 for the tiny profile),
with our own x on a second axis.

    python -m pipeline.report table --name table1 --paper config/paper.yaml --runs '[{"name": "kn5", ...}]' \
        [--paper-config config/config.yaml] [--runs-dir results/runs] [--reference results/reference] \
        [--not-run '{"ptb/vlnhmm-32768": "..."}'] [--profile tiny] [--label "..."] \
        [--scale '{"num_states": 32}'] --csv results/table1.csv --png results/table1.png [--html results/table1.html]
    python -m pipeline.report figure --name fig3 ... (same options)
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from pipeline import intervals  # noqa: E402
from pipeline.config import ConfigError, base_name, resolve_runs, stale_reason  # noqa: E402
from pipeline.integrity import SUMS, IntegrityError, read_sums, verify_dir  # noqa: E402

WITHIN_PCT = 3.0  # "within +-3 % of the paper", the front page's verdict
# Status kinds, in the order the front page counts them; a status is "<kind>: detail" or "<kind>".
STATUS_KINDS = ("measured", "reference", "cut short", "incomplete", "stale", "modified after import", "not run",
                "cited")
FIGURE_NOTE = ("Paper: only the points its tables also report (hollow squares; the paper's curves are not in its "
               "text and none is read off its plots).")
FULL_PROFILE = "full"  # the profile column where no profile overlay is in use (config/config.yaml as is)

# The CSV columns of each table, in order.  ours vs paper_*: what we ran / measured vs the paper's.
_RUN = ["status", "run"]
_SETTINGS = ["num_states", "paper_num_states", "num_clusters", "paper_num_clusters", "epochs", "paper_epochs",
             "steps", "seed", "seeds"]
_PROVENANCE = ["commit", "date", "device", "profile"]


def _ppl_cols(split: str) -> list[str]:
    """ours (the mean over seeds), its sd and 95 % interval, the paper's, the differences, the verdict:
    ``*_beyond_pct`` 0 where the paper's number lies in our interval, else how far outside (pipeline.intervals)."""
    return [f"{split}_ppl", f"{split}_sd", f"{split}_lo", f"{split}_hi", f"paper_{split}_ppl", f"{split}_diff",
            f"{split}_diff_pct", f"{split}_beyond_pct"]


# Order: which row, the results beside the paper's, what was trained beside what the paper trained, provenance.
_ABLATION = (["paper_model", "model", "n", "train_ppl", "paper_train_ppl", *_ppl_cols("valid"), "ms_per_batch",
              "paper_ms_per_batch", "paper_device", *_RUN, "params", "paper_params", *_SETTINGS, *_PROVENANCE])
COLUMNS = {
    "table1": ["dataset", "paper_model", "model", "n", *_ppl_cols("valid"), *_ppl_cols("test"), *_RUN, "params",
               "paper_params", *_SETTINGS, *_PROVENANCE],
    "table2": _ABLATION,
    "table3": ["constraint", "paper_model", "model", "n", *_ppl_cols("valid"), *_RUN, *_SETTINGS[:4], "states_per_word",
               "paper_states_per_word", *_SETTINGS[4:], *_PROVENANCE],
    "table4": _ABLATION,
}
FIGURE_COLUMNS = ["series", "x", "run_x", "num_states", "num_clusters", "n", *_ppl_cols("valid"), "epochs",
                  "steps", "seed", "seeds", "status", "source", "commit", "date", "device", "profile"]
INT_COLUMNS = {"params", "num_states", "paper_num_states", "num_clusters", "paper_num_clusters", "states_per_word",
               "paper_states_per_word", "steps", "seed", "x", "run_x", "paper_epochs", "n"}
FLOAT_COLUMNS = {"train_ppl", "valid_ppl", "test_ppl", "ms_per_batch", "epochs", "valid_sd", "valid_lo", "valid_hi",
                 "test_sd", "test_lo", "test_hi"}


def status_kind(status: Any) -> str:
    """The kind of a status (``measured``, ``not run``, ...); ``other`` for anything else."""
    text = str(status or "")
    return next((k for k in STATUS_KINDS if text == k or text.startswith(k + ":") or text.startswith(k + " ")),
                "paper" if text.startswith("paper value") else "other")


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
        modified = reference and reference_problem(Path(reference) / key)
        if reference and not modified and (ref := _read_json(Path(reference) / key / "metrics.json")) is not None:
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
            elif modified:
                run["status"] = f"modified after import: {modified}"
        runs.append(run)
    return runs


def reference_problem(directory: Path) -> str | None:
    """Why a reference run's files cannot be trusted (None: they match the SHA256SUMS written at import,
    or there is no such run).  An edited number is never shown."""
    if not (directory / "metrics.json").exists():
        return None
    sums = read_sums(directory / SUMS)
    if not sums:
        return f"{directory / SUMS} is missing; re-import the run (./repro import) or restore it from git"
    try:
        verify_dir(directory, sorted(sums), "re-import the run (./repro import) or restore it from git")
    except IntegrityError as err:
        return str(err)
    return None


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


def paper_runs(config_path: str | Path | None) -> list[dict]:
    """The runs of the full configuration (config/config.yaml as is: the paper's settings), as dicts."""
    if not config_path:
        return []
    try:
        return [r.to_dict() for r in resolve_runs(yaml.safe_load(Path(config_path).read_text()))]
    except (ConfigError, KeyError, TypeError) as err:
        raise SystemExit(f"--paper-config {config_path}: {err}") from None


# ---------------------------------------------------------------------------------- labels
def pow2(n: Any) -> str:
    """2^k for powers of two from 1024 up (the paper's notation), the plain number otherwise."""
    if _missing(n):
        return "\u2013"
    n = int(n)
    return f"2^{n.bit_length() - 1}" if n >= 1024 and n & (n - 1) == 0 else f"{n}"


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


def _states_per_word(spec: dict | None) -> int | None:
    s = (spec or {}).get("settings") or {}
    if s.get("constraint") == "brown" and s.get("num_clusters"):
        return s["num_states"] // s["num_clusters"]
    return s.get("states_per_word") if s.get("constraint") == "uniform" else None


def _hmm(spec: dict | None, key: str) -> Any:
    """An HMM setting of a spec (|Z|, M: only where the model has them, M only under Brown blocks)."""
    s = (spec or {}).get("settings") or {}
    if (spec or {}).get("model") != "vlnhmm" or (key == "num_clusters" and s.get("constraint") != "brown"):
        return None
    return s.get(key)


def _provenance(metrics: dict) -> dict:
    prov = metrics.get("provenance") or {}
    return {"commit": prov.get("commit"), "date": prov.get("date"),
            "device": metrics.get("device_name") or prov.get("device_name")}


def _pct(ours: Any, paper: Any) -> float | None:
    if ours is None or paper is None or not paper:
        return None
    return round(100.0 * (float(ours) - float(paper)) / float(paper), 1) + 0.0  # + 0.0: no "-0.0 %"


def _diff(ours: Any, paper: Any) -> float | None:
    return None if ours is None or paper is None else round(round(float(ours), 2) - float(paper), 2)


def _repeats(run: dict, runs: list[dict]) -> list[dict]:
    """``run`` and its seed repeats among ``runs`` (same dataset, same base name), the run itself first."""
    base = base_name(run["spec"]["name"])
    group = [r for r in runs if r["spec"]["dataset"] == run["spec"]["dataset"] and base_name(r["spec"]["name"]) == base]
    return sorted(group, key=lambda r: r["spec"]["name"] != base)


def untrusted(group: list[dict]) -> str | None:
    """The status of a seed of the row whose files were changed after import (its row shows no number)."""
    return next((r["status"] for r in group if status_kind(r["status"]) == "modified after import"), None)


def seed_columns(group: list[dict], paper: dict) -> dict:
    """The perplexity columns of a row from its runs over seeds (those with results): n, seeds, and per split
    the mean, sd, interval, the paper's number, the differences and the verdict (pipeline.intervals)."""
    done = [r for r in group if r["metrics"]]
    seeds = [((r["spec"].get("train") or {}).get("seed")) for r in done]
    rec: dict[str, Any] = {"n": len(done) or None,
                           "seeds": ", ".join(str(s) for s in seeds if s is not None) or None}
    for split in ("valid", "test"):
        got = [r["metrics"] for r in done if r["metrics"].get(f"{split}_ppl") is not None]
        c = intervals.combine([m[f"{split}_ppl"] for m in got], [m.get(f"{split}_ppl_interval") for m in got])
        ref = paper.get(split)
        rec.update({f"{split}_ppl": c["ppl"], f"{split}_sd": c["sd"], f"{split}_lo": c["lo"], f"{split}_hi": c["hi"],
                    f"paper_{split}_ppl": ref, f"{split}_diff": _diff(c["ppl"], ref),
                    f"{split}_diff_pct": _pct(c["ppl"], ref),
                    f"{split}_beyond_pct": intervals.beyond_pct(ref, c["lo"], c["hi"])})
    return rec


# ---------------------------------------------------------------------------------- frames
def _finish(df: pd.DataFrame) -> pd.DataFrame:
    for col in df.columns:
        if col in INT_COLUMNS:
            df[col] = pd.to_numeric(df[col]).round().astype("Int64")
        elif col == "epochs" or col.endswith("_pct"):
            df[col] = pd.to_numeric(df[col]).astype(float).round(2 if col == "epochs" else 1)
        elif col in FLOAT_COLUMNS or col.endswith("_diff") or (
                col.startswith("paper_") and col.endswith(("_ppl", "_ms_per_batch"))):
            df[col] = pd.to_numeric(df[col]).astype(float).round(2)
    return df


def _paper_rows(name: str, table: dict) -> list[dict]:
    rows = table["rows"]
    return [{**r, "dataset": ds} for ds, rs in rows.items() for r in rs] if isinstance(rows, dict) else [
        dict(r) for r in rows]


def _fills(run_spec: dict, name: str, prow: dict) -> bool:
    return (f"{name}/{prow['key']}" in run_spec.get("rows", [])
            and prow.get("dataset", run_spec["dataset"]) == run_spec["dataset"])


def build_table(name: str, paper: dict, runs: list, paper_specs: list[dict] | None = None,
                profile: str | None = None) -> pd.DataFrame:
    """All paper rows of table `name` in paper order, each with the run that fills it (if any).

    ``paper_specs``: the full configuration's runs (:func:`paper_runs`); the one filling the same
    row gives the paper's |Z|, M and epochs.  Table 3 takes them from the paper's own columns.
    """
    table, runs = paper[name], [_run(r) for r in runs]
    out = []
    for prow in _paper_rows(name, table):
        cited = prow.get("cited")
        run = None if cited else next((r for r in runs if _fills(r["spec"], name, prow)), None)
        group = _repeats(run, runs) if run else []
        run = group[0] if group else None  # the run itself; its seed repeats add to n
        pspec = None if cited else next((p for p in paper_specs or [] if _fills(p, name, prow)), None)
        spec, metrics = (run or {}).get("spec"), (run or {}).get("metrics") or {}
        train = (spec or {}).get("train") or {}
        rec: dict[str, Any] = {
            "dataset": prow.get("dataset"), "constraint": prow.get("constraint"),
            "paper_model": prow.get("model") or _table3_label(prow),
            "model": run_label(spec), "run": run["key"] if run else "",
            "status": f"cited: {cited}" if cited else run["status"] if run else "not run",
            "num_states": _hmm(spec, "num_states"), "num_clusters": _hmm(spec, "num_clusters"),
            "paper_num_states": _hmm(pspec, "num_states"), "paper_num_clusters": _hmm(pspec, "num_clusters"),
            "epochs": metrics.get("epochs") if metrics else train.get("epochs"),
            "paper_epochs": ((pspec or {}).get("train") or {}).get("epochs"),
            "steps": metrics.get("steps"), "seed": train.get("seed"),
            "states_per_word": _states_per_word(spec), "paper_states_per_word": prow.get("states_per_word"),
            "params": metrics.get("params"), "paper_params": prow.get("params"),
            "train_ppl": metrics.get("train_ppl"), "paper_train_ppl": prow.get("train"),
            "ms_per_batch": metrics.get("eval_ms_per_batch"), "paper_ms_per_batch": prow.get("ms_per_batch"),
            "paper_device": table.get("time_device"),
            "commit": None, "date": None, "device": None, "profile": profile or FULL_PROFILE,
        }
        if name == "table3":  # the paper's own configuration columns
            rec["paper_num_states"], rec["paper_num_clusters"] = prow.get("num_states"), prow.get("num_clusters")
        if metrics:
            rec.update(_provenance(metrics))
        if modified := untrusted(group):  # one edited seed: the row's numbers are not shown at all
            rec["status"], group = modified, []
        rec.update(seed_columns(group, prow))
        out.append(rec)
    return _finish(pd.DataFrame(out, columns=COLUMNS[name]))


def _table3_label(prow: dict) -> str:
    parts = [str(prow.get("constraint"))]
    if prow.get("num_states"):
        parts.append(f"|Z| = {prow['num_states']}")
    if prow.get("num_clusters"):
        parts.append(f"M = {prow['num_clusters']}")
    return ", ".join(parts)


def build_figure(name: str, paper: dict, runs: list, scale: dict | None = None,
                 profile: str | None = None) -> pd.DataFrame:
    """Long format, one row per point: ours (one per run) then the paper's.

    ``x`` is where the point is plotted: the paper-equivalent setting (ours x ``scale``); ``run_x`` our
    own setting.  Our point at an x where the paper reports a value carries it and the difference.
    """
    fig = paper[name]
    xkey, skey = fig["x"], fig.get("series")
    factor = (scale or {}).get(xkey) or 1
    paper_at = {(str(p.get(skey)) if skey else "", p[xkey]): p for p in fig["points"]}
    out = []
    mine = [r for r in map(_run, runs) if name in r["spec"].get("rows", [])]
    for run in (r for r in mine if base_name(r["spec"]["name"]) == r["spec"]["name"]):
        group = _repeats(run, mine)
        spec, metrics = run["spec"], run["metrics"] or {}
        settings, train = spec.get("settings") or {}, spec.get("train") or {}
        series = str(settings.get(skey)) if skey else ""
        run_x = settings.get(xkey)
        x = None if run_x is None else run_x * factor
        ref = paper_at.get((series, x))
        modified = untrusted(group)  # one edited seed: the point shows no number
        status = modified or run["status"]
        cols = seed_columns([] if modified else group, {"valid": ref and ref["valid"]})
        out.append({"series": " ".join(["ours"] + ([series] if skey else [])), "x": x, "run_x": run_x,
                    "num_states": _hmm(spec, "num_states"), "num_clusters": _hmm(spec, "num_clusters"),
                    **{k: v for k, v in cols.items() if not k.startswith("test")},
                    "epochs": metrics.get("epochs") if metrics else train.get("epochs"),
                    "steps": metrics.get("steps"), "seed": train.get("seed"), "status": status,
                    "source": run["key"], "profile": profile or FULL_PROFILE} | (_provenance(metrics) if metrics else {}))
    out.sort(key=lambda r: (r["series"], r["x"] or 0))
    for pt in fig["points"]:
        out.append({"series": " ".join(["paper"] + ([str(pt[skey])] if skey else []) + ["(table values)"]),
                    "x": pt[xkey], "paper_valid_ppl": pt["valid"], "status": f"paper value ({pt['source']})",
                    "source": pt["source"], "profile": profile or FULL_PROFILE})
    return _finish(pd.DataFrame(out, columns=FIGURE_COLUMNS))


# ---------------------------------------------------------------------------------- text
def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or isinstance(v, float) and math.isnan(v)


def fmt(v: Any, kind: str = "") -> str:
    """A cell value as text: ``params`` 1.2M / 3.4k, ``pct`` +1.2 %, ``diff`` +1.23, floats 2 decimals."""
    if _missing(v) or v == "":
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


# ---------------------------------------------------------------------------------- PNG: tables
STATUS_COLORS = {"measured": "#ffffff", "cut short": "#fde9c9", "incomplete": "#fde9c9", "not run": "#e6e6e6",
                 "cited": "#e3eefa", "reference": "#e4f3e4", "stale": "#f8d7da"}
INK, PAPER_INK, GOOD, RUN_INK = "#111111", "#6b6b6b", "#1a7f37", "#2f5f8f"  # RUN_INK: our run's key


def _pair(ours: Any, paper: Any, kind: str = "") -> list[tuple[str, str]]:
    """A cell of two lines: ours (black) over the paper's (grey, as the paper prints it)."""
    shown = paper if isinstance(paper, str) else fmt(paper, kind) if kind or _missing(paper) else f"{paper:g}"
    return [(fmt(ours, kind), INK), (shown, PAPER_INK)]


def _ppl_cell(row: Any, split: str) -> list[tuple[str, str]]:
    """Ours (mean +- sd over n seeds), our 95 % interval, the paper's."""
    ours, sd, n = row.get(f"{split}_ppl"), row.get(f"{split}_sd"), row.get("n")
    lo, hi = row.get(f"{split}_lo"), row.get(f"{split}_hi")
    if _missing(ours):
        return _pair(ours, row.get(f"paper_{split}_ppl"))
    head = fmt(ours) + ("" if _missing(sd) else f" \u00b1 {sd:.2f}") + ("" if _missing(n) else f" (n = {n})")
    span = "[\u2013]" if _missing(lo) else f"[{lo:.2f}, {hi:.2f}]"
    return [(head, INK), (span, RUN_INK)] + _pair(ours, row.get(f"paper_{split}_ppl"))[1:]


def verdict_text(beyond: Any) -> str:
    """``in interval`` / ``+4.2 % beyond`` / ``no interval`` (a row's ``*_beyond_pct``)."""
    if _missing(beyond):
        return "no interval"
    return "in interval" if beyond == 0 else f"{beyond:+.1f} % beyond"


def _diff_cell(row: Any, split: str) -> list[tuple[str, str]]:
    pct, diff = row.get(f"{split}_diff_pct"), row.get(f"{split}_diff")
    if _missing(pct):
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
        zm = [(f"{fmt(r['num_states'])} / {fmt(r['num_clusters'])}" if not _missing(r["num_states"]) else "\u2013",
               INK), (f"{pow2(r['paper_num_states'])} / {fmt(r['paper_num_clusters'])}"
                      if not _missing(r["paper_num_states"]) else "\u2013", PAPER_INK)]
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
        stats = _read_json(Path(path))
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
            if modal is not None and not _missing(ep) and abs(ep - modal) > 1e-6:
                ax.annotate(f"{ep:g} epochs", (x, y), textcoords="offset points", xytext=(0, -16), ha="center",
                            fontsize=8.5, color=color, weight="bold")
        for x in mine[mine.valid_ppl.isna()].x.dropna():  # in the bottom margin kept free below the data
            ax.annotate("not run", (x * dodge[kind], 0.02 + 0.05 * i), xycoords=("data", "axes fraction"),
                        ha="center", fontsize=8, color=color)
        pts = df[df.series.str.startswith("paper") & (df.series.map(_series_kind) == kind)].dropna(
            subset=["paper_valid_ppl"])
        ax.plot(pts.x * dodge[kind], pts.paper_valid_ppl, "s", ms=10, mfc="none", mew=1.8, color=color, zorder=4,
                label="paper" + (f" {kind}" if kind else "") + " (its tables)")
        for x, y in zip(pts.x * dodge[kind], pts.paper_valid_ppl):
            ax.annotate(f"{y:g}", (x, y), textcoords="offset points", xytext=(10 * side, 0), va="center",
                        ha="right" if side < 0 else "left", fontsize=8.5, color=color)
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


# ---------------------------------------------------------------------------------- HTML
_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 12px; color: #111; }}
h1 {{ font-size: 17px; margin: 0 0 4px; }} p {{ margin: 2px 0; }} .profile {{ color: #8a4b00; }}
.wrap {{ overflow: auto; max-height: calc(100vh - 150px); border: 1px solid #ccc; margin: 8px 0; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #e5e5e5; white-space: nowrap; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
th {{ position: sticky; top: 0; background: #e8e8e8; cursor: pointer; user-select: none; z-index: 1; }}
th.paper, td.paper {{ color: #5a5a5a; }} th.paper {{ background: #efefef; }}
th:hover {{ background: #d5d5d5; }} th[data-dir="1"]::after {{ content: " \\25B2"; }}
th[data-dir="-1"]::after {{ content: " \\25BC"; }}
td.first, th.first {{ position: sticky; left: 0; background: #fff; }} th.first {{ background: #e8e8e8; z-index: 2; }}
tr:nth-child(even) td {{ background: #fafafa; }} td.good {{ color: #1a7f37; font-weight: 600; }}
{status_css}
.foot {{ font-size: 12px; color: #333; }}
</style></head><body>
<h1>{title}</h1>
{subtitle}
<p class="foot">Click a column heading to sort (again: reverse).  <code>paper_*</code> columns (grey) are the paper's;
the others ours.  <a download="{csv_name}" href="data:text/csv;base64,{csv_b64}">Download {csv_name}</a></p>
<div class="wrap"><table id="t"><thead><tr>{heads}</tr></thead><tbody>
{rows}
</tbody></table></div>
{foot}
<script>
(function () {{
  var table = document.getElementById("t"), body = table.tBodies[0];
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {{
    th.addEventListener("click", function () {{
      var dir = th.getAttribute("data-dir") === "1" ? -1 : 1;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) {{ o.removeAttribute("data-dir"); }});
      th.setAttribute("data-dir", String(dir));
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {{
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        if (x === "" && y === "") return 0;
        if (x === "") return 1;
        if (y === "") return -1;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny) && String(nx) === x && String(ny) === y) ? nx - ny : x.localeCompare(y);
        return dir * c;
      }});
      rows.forEach(function (r) {{ body.appendChild(r); }});
    }});
  }});
}})();
</script>
</body></html>
"""


def render_html(df: pd.DataFrame, title: list[str], foot: list[str], csv_text: str, csv_name: str,
                path: str | Path) -> None:
    """Every column of the CSV as a sortable table in one self-contained HTML file (works offline)."""
    esc = html.escape
    cols = list(df.columns)

    def cell(col: str, v: Any, i: int) -> str:
        classes = ["first"] if i == 0 else []
        if col.startswith("paper_"):
            classes.append("paper")
        if _missing(v) or v == "":
            return f'<td class="{" ".join(classes)}" data-v="">\u2013</td>'
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        text = fmt(v, "pct" if col.endswith("_pct") else "diff" if col.endswith("_diff") else
                   "epochs" if col in ("epochs", "paper_epochs") else "")
        if col.startswith("paper_") and isinstance(v, float):
            text = f"{v:g}"  # as the paper prints it
        if number:
            classes.append("num")
            if col.endswith("_diff_pct") and abs(v) <= WITHIN_PCT or col.endswith("_beyond_pct") and v == 0:
                classes.append("good")
        if col == "status":
            classes.append("s-" + status_kind(v).replace(" ", "-"))
        raw = repr(float(v)).removesuffix(".0") if number else str(v)
        return f'<td class="{" ".join(classes)}" data-v="{esc(raw)}" title="{esc(str(v))}">{esc(text)}</td>'

    heads = "".join(f'<th class="{"first " if i == 0 else ""}{"paper" if c.startswith("paper_") else ""}">'
                    f"{esc(c)}</th>" for i, c in enumerate(cols))
    rows = "\n".join("<tr>" + "".join(cell(c, v if not _missing(v) else None, i) for i, (c, v) in
                                      enumerate(zip(cols, r))) + "</tr>" for r in df.itertuples(index=False))
    status_css = "\n".join(f"td.s-{k.replace(' ', '-')} {{ background: {c} !important; }}"
                           for k, c in STATUS_COLORS.items() if k != "measured")
    subtitle = "".join(f'<p{" class=profile" if i == len(title) - 1 else ""}>{esc(t)}</p>'
                       for i, t in enumerate(title[1:], 1))
    text = _HTML.format(title=esc(title[0]), subtitle=subtitle, heads=heads, rows=rows, status_css=status_css,
                        foot="".join(f'<p class="foot">{esc(f)}</p>' for f in foot), csv_name=esc(csv_name),
                        csv_b64=base64.b64encode(csv_text.encode()).decode())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


# ---------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["table", "figure"])
    p.add_argument("--name", required=True)
    p.add_argument("--paper", required=True)
    p.add_argument("--paper-config", help="the full configuration (config/config.yaml): the paper's settings per row")
    p.add_argument("--runs", type=json.loads, default=[], help="JSON list of the runs' specs (Run.to_dict)")
    p.add_argument("--runs-dir", default="results/runs", help="where each run's metrics.json is")
    p.add_argument("--reference")
    p.add_argument("--not-run", default="{}", help="JSON mapping run key (dataset/name) -> reason")
    p.add_argument("--profile", help="the profile's name (the CSV's profile column; default: full)")
    p.add_argument("--label", help="the profile's label, printed on the table or figure")
    p.add_argument("--scale", type=json.loads, default={}, help='JSON: how the profile scales the paper\'s sizes, '
                   'e.g. {"num_states": 32, "num_clusters": 8}')
    p.add_argument("--data-stats", nargs="*", default=[], help="the datasets' stats.json (data/<dataset>/): their "
                   "vocabulary size, a uniform model's perplexity, is printed for scale")
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--html", help="the CSV as a sortable, self-contained HTML table")
    a = p.parse_args(argv)
    paper = yaml.safe_load(Path(a.paper).read_text())
    if a.name not in paper or (a.kind == "table") != (a.name in COLUMNS):
        p.error(f"no {a.kind} {a.name!r} in {a.paper}")
    runs = load_runs(a.runs, a.runs_dir, a.reference, json.loads(a.not_run))
    caption, scale_note = paper[a.name]["caption"], uniform_note(a.data_stats)
    if a.kind == "table":
        df = build_table(a.name, paper, runs, paper_runs(a.paper_config), a.profile)
        title, foot = title_lines(caption, df, a.label), table_foot(a.name, paper, df, "html") + scale_note
        render_table(a.name, df, title, table_foot(a.name, paper, df) + scale_note, a.png)
    else:
        df = build_figure(a.name, paper, runs, a.scale, a.profile)
        title = title_lines(caption, df, a.label)
        foot = [FIGURE_NOTE, "x: where the point is plotted (paper-equivalent: our run_x \u00d7 the profile's scale); "
                "run_x: our own setting.", INTERVAL_NOTE, provenance_line(df[df.series.str.startswith("ours")]),
                *scale_note]
        render_figure(df, a.name, paper, title, a.scale, a.png, scale_note)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    if a.html:
        render_html(df, title, foot, Path(a.csv).read_text(), Path(a.csv).name, a.html)


if __name__ == "__main__":
    main()
