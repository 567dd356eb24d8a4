"""Which run fills a paper row, and whether its numbers may be shown.

A row's metrics come from the run's ``metrics.json``; failing that from a reference directory of runs
done elsewhere (status ``reference: ...`` with their provenance); failing that the row is ``not run``.
A result whose recorded spec differs from the config's is never shown (``stale: ...``), nor one whose files
do not match the ``SHA256SUMS`` written when the run finished (``modified after the run: ...``) or when it
was imported (``modified after import: ...``), nor one that cannot be read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, base_name, filed_as, resolve_runs, stale_reason
from pipeline.integrity import SUMS, IntegrityError, read_sums, verify_dir

# Status kinds, in the order the front page counts them; a status is "<kind>: detail" or "<kind>".
STATUS_KINDS = ("measured", "reference", "cut short", "incomplete", "stale", "modified after the run",
                "modified after import", "not run", "cited")
MODIFIED = ("modified after the run", "modified after import")  # a seed whose files fail their record


def status_kind(status: Any) -> str:
    """The kind of a status (``measured``, ``not run``, ...); ``other`` for anything else."""
    text = str(status or "")
    return next((k for k in STATUS_KINDS if text == k or text.startswith(k + ":") or text.startswith(k + " ")),
                "paper" if text.startswith("paper value") else "other")



# ---------------------------------------------------------------------------------- runs
def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_runs(specs: list[dict], runs_dir: str | Path, reference: str | Path | None = None,
              not_run: dict[str, str] | None = None) -> list[dict]:
    """One dict per run spec (the config's, as :meth:`Run.to_dict`): key, spec, metrics, status.

    Metrics come from ``runs_dir/<key>/metrics.json``, else from ``reference/<key>/`` (``reference/<recipe>/<key>/``
    for a spec of a recipe other than the default: :func:`pipeline.config.filed_as`); a result
    trained from other settings than the spec's is not used (status ``stale: ...``), nor one whose files
    fail their record (``modified after the run: ...`` / ``modified after import: ...``).
    """
    runs = []
    for spec in specs:
        key = f"{spec['dataset']}/{spec['name']}"
        run = {"key": key, "spec": spec, "metrics": None, "status": (not_run or {}).get(key, "not run")}
        local = Path(runs_dir) / key
        if problem := record_problem(local, f"delete {local} and run it again (snakemake remakes it)"):
            runs.append(run | {"status": f"modified after the run: {problem}"})
            continue
        found = [(m, None) for m in [load_json(local / "metrics.json")] if m is not None]
        filed = reference and Path(reference) / filed_as(key, spec.get("recipe"))
        modified = filed and record_problem(filed, REIMPORT)
        if filed and not modified and (ref := load_json(filed / "metrics.json")) is not None:
            prov = ref.get("provenance") or {}
            commit = trained_commit(ref)
            where = ", ".join(str(v) for v in (ref.get("device_name"), cpu_training(ref), prov.get("date"),
                                               commit and f"commit {short_commit(commit)}") if v)
            found.append((ref, f"reference: {ref.get('status') or 'status missing'} ({where})"))
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


REIMPORT = "re-import the run (./repro import) or restore it from git"


def record_problem(directory: Path, what_to_do: str) -> str | None:
    """Why a run's files cannot be trusted (None: they match the SHA256SUMS written when the run finished or
    was imported, or there is no such run).  An edited, truncated or unreadable file is never used."""
    if not (directory / "metrics.json").exists():
        return None
    sums = read_sums(directory / SUMS)
    if not sums:
        return f"{directory / SUMS} is missing: the files of {directory} cannot be checked; {what_to_do}"
    try:
        verify_dir(directory, sorted(set(sums) | {"metrics.json"}), what_to_do)
        json.loads((directory / "metrics.json").read_text())
    except IntegrityError as err:
        return str(err)
    except ValueError as err:
        return f"{directory / 'metrics.json'} cannot be read as JSON ({err}); {what_to_do}"
    return None


def trained_commit(metrics: dict) -> str | None:
    """The commit of the code that trained the run to its end: its last training segment's (the code that
    process started with).  A trainer of older code wrote the checkout's commit at its end into
    ``provenance.commit``, which is later than that code where commits landed while it trained."""
    segments = metrics.get("segments") or []
    return (segments[-1].get("commit") if segments else None) or (metrics.get("provenance") or {}).get("commit")


def short_commit(commit: str) -> str:
    """A commit's first 10 hex digits, keeping a ``-dirty`` mark (uncommitted changes when it ran)."""
    commit = str(commit)
    return commit.removesuffix("-dirty")[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def cpu_training(metrics: dict) -> str | None:
    """"bf16 training" / "fp32 training" for a run trained on a CPU (evaluation is always fp32); None elsewhere."""
    if metrics.get("device") != "cpu" or not metrics.get("cpu_precision"):
        return None
    spans = " (resumed on another CPU kind or precision)" if metrics.get("spans") else ""
    return f"{metrics['cpu_precision'].get('used')} training{spans}"


def _result_spec(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "rows"}


def as_run(run: Any) -> dict:
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



def repeats(run: dict, runs: list[dict]) -> list[dict]:
    """``run`` and its seed repeats among ``runs`` (same dataset, same base name), the run itself first."""
    base = base_name(run["spec"]["name"])
    group = [r for r in runs if r["spec"]["dataset"] == run["spec"]["dataset"] and base_name(r["spec"]["name"]) == base]
    return sorted(group, key=lambda r: r["spec"]["name"] != base)


def untrusted(group: list[dict]) -> str | None:
    """The row's status where a seed's files fail their record (the row then shows no number): which seed was
    left out, and why."""
    bad = next((r for r in group if status_kind(r["status"]) in MODIFIED), None)
    if bad is None:
        return None
    kind, detail = bad["status"].split(": ", 1)
    seed = (bad["spec"].get("train") or {}).get("seed")
    which = f"seed {seed} ({bad['key']})" if seed is not None else bad["key"]
    return f"{kind}: {which} left out, so the row shows no number: {detail}"

