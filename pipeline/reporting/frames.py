"""The CSV frames of the paper's tables and figures: every paper row, in paper order, with the run that
fills it, ours beside the paper's (settings, perplexities over seeds, differences, provenance)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline import intervals
from pipeline.config import base_name
from pipeline.reporting.runs import as_run, cpu_training, repeats, status_kind, trained_commit, untrusted
from pipeline.training.curves import run_label

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
    device = metrics.get("device_name") or prov.get("device_name")
    trained = cpu_training(metrics)  # a CPU run says in what precision it trained
    return {"commit": trained_commit(metrics), "date": prov.get("date"),
            "device": f"{device}; {trained}" if device and trained else device}


def _pct(ours: Any, paper: Any) -> float | None:
    if ours is None or paper is None or not paper:
        return None
    return round(100.0 * (float(ours) - float(paper)) / float(paper), 1) + 0.0  # + 0.0: no "-0.0 %"


def _diff(ours: Any, paper: Any) -> float | None:
    return None if ours is None or paper is None else round(round(float(ours), 2) - float(paper), 2)


FINAL = ("measured", "reference", "cut short")  # status kinds of a seed whose numbers are final


def counted(group: list[dict]) -> list[dict]:
    """The seeds a row's numbers come from: those whose results are final (measured, cut short, filed); where
    none is yet, the provisional ones (incomplete: still training), as a row of a single run shows them.  A
    seed still training never moves the mean of seeds that are done."""
    done = [r for r in group if r["metrics"]]
    return [r for r in done if status_kind(r["status"]) in FINAL] or done


def not_counted(group: list[dict]) -> str:
    """``; not counted yet: seed 2222 (incomplete: ...)``: the seeds with provisional results left out of a
    row's numbers (empty where none)."""
    shown = counted(group)
    left = [r for r in group if r["metrics"] and r not in shown]
    return "; not counted yet: " + ", ".join(
        f"seed {(r['spec'].get('train') or {}).get('seed')} ({r['status']})" for r in left) if left else ""


def seed_columns(group: list[dict], paper: dict) -> dict:
    """The perplexity columns of a row from its runs over seeds (:func:`counted`): n, seeds, and per split
    the mean, sd, interval, the paper's number, the differences and the verdict (pipeline.intervals)."""
    done = counted(group)
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
    table, runs = paper[name], [as_run(r) for r in runs]
    out = []
    for prow in _paper_rows(name, table):
        cited = prow.get("cited")
        run = None if cited else next((r for r in runs if _fills(r["spec"], name, prow)), None)
        group = repeats(run, runs) if run else []
        modified = untrusted(group)  # one edited seed: the row's numbers are not shown at all
        # the run itself, or (a seed still training) its first counted repeat
        run = ((not modified and counted(group)) or group)[0] if group else None
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
        if modified:
            rec["status"], group = modified, []
        rec["status"] += not_counted(group)
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
    paper_at: dict = {}  # (series, x) -> the paper's point there; the first where a table gives two
    for p in fig["points"]:
        paper_at.setdefault((str(p.get(skey)) if skey else "", p[xkey]), p)
    out = []
    mine = [r for r in map(as_run, runs) if name in r["spec"].get("rows", [])]
    for run in (r for r in mine if base_name(r["spec"]["name"]) == r["spec"]["name"]):
        group = repeats(run, mine)
        modified = untrusted(group)  # one edited seed: the point shows no number
        run = ((not modified and counted(group)) or group)[0]  # the run itself, or its first counted repeat
        spec, metrics = run["spec"], run["metrics"] or {}
        settings, train = spec.get("settings") or {}, spec.get("train") or {}
        series = str(settings.get(skey)) if skey else ""
        run_x = settings.get(xkey)
        x = None if run_x is None else run_x * factor
        ref = paper_at.get((series, x))
        status = modified or run["status"] + not_counted(group)
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


