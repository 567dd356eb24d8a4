"""What each difference between the paper's text and the released code costs, measured.

The config's ``recipes:`` hold the default recipe (``paper-text``: the paper's text, and the released
run command where the text is silent) and ``released-code`` (every setting as the released code has
it).  ``fidelity:`` trains, at one size (``settings``) over ``seeds``, these variants:

* ``paper-text`` and ``released-code``: the two recipes;
* one per ``switches`` entry: the default recipe with that switch changed alone -- a list of setting
  names takes the released recipe's values, a mapping gives values (for a setting both recipes share).

``results/fidelity.csv`` has one row per comparison (the released recipe, then each switch, against
the default recipe): the settings switched, their two values, the valid perplexity of each side
over the seeds (mean, sample standard deviation, n: measured runs only) with its 95 % interval
(:func:`pipeline.intervals.combine`, as the tables have it: each run's bootstrap over valid
documents, widened by the seed spread), the difference (switched - default) and whether it exceeds
the seed spread (|difference| > std of one side + std of the other; empty under 2 seeds a side).
The verdict uses the seed spread alone: both sides score the same valid documents, so the
document-sampling part of the intervals is common to them and cancels in the difference.  Seeds are
the training loop's ``seed`` (weights, dropout draws, data order), one run (``fidelity-<variant>-s<seed>``)
each.

    python -m pipeline.reporting.fidelity --spec JSON --metrics M1 M2 ... --csv results/fidelity.csv --png ...
    python -m pipeline.reporting.fidelity --config config/config.yaml [overlay.yaml ...] --csv ... --png ...

The second form reads the config itself and whatever runs have finished (for partial results).
This module's top imports nothing heavy: the Snakefile uses :func:`run_entries` and :func:`spec`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from hmm.config import ConfigError, HMMConfig
from pipeline.authors import AUTHORS_DIR, AUTHORS_SHA256
from pipeline.config import DEFAULT_RECIPE, TrainConfig, recipe_settings, resolve_runs
from pipeline.integrity import sha256
from pipeline.intervals import combine
from pipeline.reporting.runs import record_problem

ROOT = Path(__file__).resolve().parents[2]
RELEASED = "released-code"
COLUMNS = ["switch", "settings", "default_value", "switched_value",
           "default_ppl_mean", "default_ppl_std", "default_n", "default_ppl_lo", "default_ppl_hi",
           "switched_ppl_mean", "switched_ppl_std", "switched_n", "switched_ppl_lo", "switched_ppl_hi",
           "difference", "exceeds_seed_spread"]


def default_of(name: str):
    for cls in (HMMConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.default
    raise ConfigError(f"fidelity: {name} is not a VLNHMM or training setting")


def variants(config: dict) -> dict[str, dict]:
    """Variant name -> the recipe settings it trains with (every setting any variant changes)."""
    fid = config["fidelity"]
    paper, released = recipe_settings(config, DEFAULT_RECIPE), recipe_settings(config, RELEASED)
    switches = fid["switches"]
    switched = {k for s in switches.values() for k in s}
    missing = sorted(set(released) - set(paper) - switched)
    if missing:
        raise ConfigError(f"fidelity.switches: the released recipe's {', '.join(missing)} is switched by none")
    names = sorted(set(paper) | set(released) | switched)
    base = {k: default_of(k) for k in names} | paper
    out = {DEFAULT_RECIPE: base, RELEASED: base | released}
    for name, switch in switches.items():
        values = dict(switch) if isinstance(switch, dict) else {k: out[RELEASED][k] for k in switch}
        out[name] = base | values
    return out


def run_name(variant: str, seed: int) -> str:
    return f"fidelity-{variant}-s{seed}"


def run_entries(config: dict) -> list[dict]:
    """The ``runs:`` entries of every variant and seed (none without a ``fidelity:`` section)."""
    if not config.get("fidelity"):
        return []
    fid = config["fidelity"]
    return [{"name": run_name(v, seed), "dataset": fid["dataset"], "model": "vlnhmm", "rows": ["fidelity"],
             **fid["settings"], **values, "seed": seed}
            for v, values in variants(config).items() for seed in fid["seeds"]]


def spec(config: dict) -> dict:
    """What the table needs: per comparison the two variants' changed settings and run keys."""
    fid, var = config["fidelity"], variants(config)
    base = var[DEFAULT_RECIPE]
    keys = {v: [f"{fid['dataset']}/{run_name(v, s)}" for s in fid["seeds"]] for v in var}
    rows = []
    for v in [RELEASED, *fid["switches"]]:
        changed = [k for k in var[v] if var[v][k] != base[k]]
        rows.append({"switch": "released recipe (all)" if v == RELEASED else v, "settings": changed,
                     "default": {k: base[k] for k in changed}, "switched": {k: var[v][k] for k in changed},
                     "default_runs": keys[DEFAULT_RECIPE], "switched_runs": keys[v]})
    return {"rows": rows, "dataset": fid["dataset"], "settings": fid["settings"], "seeds": fid["seeds"]}


def setting_text(name: str, value, settings: dict, dataset: str) -> str:
    """A setting's value as the committed table shows it: a file by what it is, never where it sat.

    ``cluster_paths`` under ``clusters: authors`` is the authors' file, whose pinned sha256 the pipeline
    checks before it reads it; under ``paths-file`` it is the file's name and sha256 (read here, from
    the path as given or relative to the repository)."""
    if name != "cluster_paths" or value is None:
        return str(value)
    if settings.get("clusters") == "authors":
        num_clusters = int(settings.get("num_clusters", default_of("num_clusters")))
        pinned = AUTHORS_SHA256[dataset][num_clusters]
        return f"authors' {AUTHORS_DIR[dataset]}-{num_clusters} paths (sha256 {pinned})"
    path = next((p for p in (Path(value), ROOT / value) if p.is_file()), None)
    return f"{Path(value).name} (sha256 {sha256(path) if path else 'unknown: file not found'})"


def _values(d: dict, settings: dict, dataset: str) -> str:
    """``name=value; ...`` of the settings ``d`` (``settings``: the variant's, for what a value means)."""
    return "; ".join(f"{k}={setting_text(k, v, settings, dataset)}" for k, v in d.items())


def _side(runs: list[str], valid: dict[str, tuple[float, list[float] | None]]) -> list:
    """mean, std, n, lo, hi of the measured runs among ``runs``."""
    have = [valid[k] for k in runs if k in valid]
    c = combine([ppl for ppl, _ in have], [iv for _, iv in have])
    return [c["ppl"], c["sd"], c["n"], c["lo"], c["hi"]]


def table(spec: dict, valid: dict[str, tuple[float, list[float] | None]]):
    """The fidelity table (a DataFrame) from ``valid``: run key -> (valid perplexity, its bootstrap
    interval or None) of the measured runs (:func:`measured`)."""
    import pandas as pd

    out = []
    for r in spec["rows"]:
        a, b = _side(r["default_runs"], valid), _side(r["switched_runs"], valid)
        diff = b[0] - a[0] if a[2] and b[2] else None
        exceeds = "" if diff is None or a[1] is None or b[1] is None else (
            "yes" if abs(diff) > a[1] + b[1] else "no")
        sides = [_values(r[side], spec["settings"] | r[side], spec["dataset"]) for side in ("default", "switched")]
        out.append([r["switch"], ", ".join(r["settings"]), *sides, *a, *b, diff, exceeds])
    df = pd.DataFrame(out, columns=COLUMNS)
    for c in df.columns:
        if c.endswith(("_mean", "_std", "_lo", "_hi")) or c == "difference":
            df[c] = df[c].astype(float).round(2)
    return df


def measured(metrics_files: list[Path]) -> dict[str, tuple[float, list[float] | None]]:
    """run key -> (valid perplexity, its bootstrap interval), of the runs that finished (status measured) and
    whose files match their record (one that does not is left out, and said on stderr)."""
    out = {}
    for f in metrics_files:
        if problem := record_problem(Path(f).parent, f"delete {Path(f).parent} and run it again"):
            print(f"fidelity: left out {Path(f).parent}: modified after the run: {problem}", file=sys.stderr)
            continue
        m = json.loads(Path(f).read_text())
        if str(m.get("status", "")).startswith("measured") and m.get("valid_ppl") is not None:
            out[f"{m['spec']['dataset']}/{m['run'].split('/')[-1]}"] = (float(m["valid_ppl"]),
                                                                         m.get("valid_ppl_interval"))
    return out


def plot(df, spec: dict, path: Path, label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.7 * len(df) + 1.6))
    for i, r in df.iterrows():
        y = len(df) - 1 - i
        for side, dy, color in (("default", 0.15, "tab:blue"), ("switched", -0.15, "tab:orange")):
            mean, lo, hi = r[f"{side}_ppl_mean"], r[f"{side}_ppl_lo"], r[f"{side}_ppl_hi"]
            if not math.isnan(mean):
                xerr = [[0], [0]] if math.isnan(lo) else [[mean - lo], [hi - mean]]
                ax.errorbar(mean, y + dy, xerr=xerr, fmt="o", color=color, capsize=3,
                            label=("default recipe" if side == "default" else "switched") if i == 0 else None)
    ax.set_yticks(range(len(df)), [f"{s}\n({n})" for s, n in zip(df["switch"][::-1], df["switched_n"][::-1])])
    s = spec["settings"]
    ax.set_xlabel("valid perplexity (mean over seeds; bars: 95 % interval, bootstrap over documents widened by "
                  "the seed spread;\nn switched runs in brackets)", fontsize=8)
    ax.set_title(f"Paper text vs released code: {spec['dataset']}, |Z| = {s.get('num_states')}, "
                 f"M = {s.get('num_clusters')}, {s.get('epochs')} epoch(s)" + (f"\n{label}" if label else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _merged(files: list[Path]) -> dict:
    import yaml

    def merge(a: dict, b: dict) -> dict:
        return a | {k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                    for k, v in b.items()}
    config: dict = {}
    for f in files:
        config = merge(config, yaml.safe_load(Path(f).read_text()) or {})
    return config


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The fidelity table and figure (see the module docstring).")
    p.add_argument("--spec", help="JSON of spec() (the workflow passes it)")
    p.add_argument("--metrics", nargs="*", type=Path, default=[], help="the runs' metrics.json files")
    p.add_argument("--config", nargs="+", type=Path, help="config files, merged in order (instead of --spec)")
    p.add_argument("--label", default="")
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--png", required=True, type=Path)
    a = p.parse_args(argv)
    if a.config:
        config = _merged(a.config)
        s = spec(config)
        runs = resolve_runs(config | {"runs": []}, run_entries(config))
        metrics = [Path(r.out_dir) / "metrics.json" for r in runs]
        metrics = [m for m in metrics if m.is_file()]
    else:
        s, metrics = json.loads(a.spec), a.metrics
    df = table(s, measured(metrics))
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    plot(df, s, a.png, a.label)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
