"""File a GPU node job's results into the repository: ``./repro import OUT``.

    ./repro import /path/to/OUT                       # against config/config.yaml
    ./repro import OUT --profile profiles/tiny        # the config a rehearsal bundle was made from (filed
                                                      # under tiny/results/reference/, never the committed tree)

OUT is what :mod:`pipeline.node` left (summary.json, check.json, runs.tgz, bench CSVs).  Each run
of runs.tgz goes to ``results/reference/<dataset>/<run>/`` (``results/reference/<recipe>/<dataset>/<run>/``
under a recipe other than the default, e.g. ``--config recipe=released-code``):

    metrics.json     the run's own metrics (spec, status, perplexities, epochs, wall time, ...) with
                     ``provenance`` extended: GPU, driver, CUDA, torch, TVM, commit (and the bundle's
                     dirty flag), date, host, wall time, epochs done of planned, scan backend (and
                     why the node chose it), matmul precision, max_seconds, the node job
    provenance.json  that provenance alone;   curve.csv, train.log, spec.json (as the node ran it),
                     docs.npz (scores per document: pipeline.intervals)

The tables (pipeline.reporting.report) show such a run, where no local result exists, as
``reference: <its status> (<GPU>, <date>, commit <commit>)``: a run the budget stopped says
``cut short: time ...``.  A run is refused, naming the setting, when its spec differs from today's
config in anything but execution settings (pipeline.config.EXECUTION_SETTINGS: device,
max_seconds, cuda_graph and the scan backend, which the node picks from its kernel check: both scans
compute the same numbers); the backend used and why are recorded.  A measured
reference of today's settings is not replaced by a cut-short one without ``--force``.  Bench CSVs go to
results/bench/; summary.json, check.json and the CSVs are also kept, committed, in
``results/reference/_sessions/<date>-<device>/``.  Every run is judged before anything is written: an
import that files no run of OUT's (all refused or kept) writes nothing, not even the bench CSVs or the
session record.  Exit status 1 if any run was refused or nothing was written.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import ConfigError, resolve_runs, run_history, spec_differences
from pipeline.files import read_json, shown_path
from pipeline.integrity import SUMS, IntegrityError, read_sums, record_dir, sha256, verify_dir
from pipeline.references import filing_roots, keeps_reference

ROOT = Path(__file__).resolve().parents[2]


def _extract(archive: Path, dest: Path) -> None:
    """Unpack runs.tgz, refusing members outside ``dest`` and anything but files and folders."""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not target.is_relative_to(dest.resolve()):
                raise SystemExit(f"{archive}: refusing member {m.name!r}")
        tar.extractall(dest, filter="data")


def archive_problem(key: str, src: Path, archived: dict | None) -> str | None:
    """Why the run's files in runs.tgz are not the node's (None: each matches the SHA-256 that the node
    wrote into summary.json when it packed them)."""
    if archived is None:
        return f"{key}: summary.json holds no archive_sha256 (a node job of older code?): its files cannot be checked"
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        name = f"runs/{key}/{path.name}"
        expected, actual = archived.get(name), sha256(path)
        if expected != actual:
            return (f"{key}: {name} in runs.tgz does not match the node's record in summary.json (expected "
                    f"{expected}, actual {actual}): the archive was changed after the node job")
    return None


def refusal(key: str, trained: dict | None, current) -> str | None:
    """Why the run cannot be filed under today's config (None: it can)."""
    if current is None:
        return f"{key} is not a run of today's config"
    if trained is None:
        return f"{key}: its metrics.json records no spec"
    diffs = spec_differences(trained, current.result_spec())
    if not diffs:
        return None
    what = "; ".join(f"`{k}` trained {old!r}, config now {new!r}" for k, old, new in diffs)
    return (f"{key}: its spec differs from today's config in {', '.join(f'`{k}`' for k, _, _ in diffs)} ({what}); "
            "rerun it with a new bundle, or import against the config it was made from")


def provenance(metrics: dict, summary: dict, trained: dict, out_dir: Path, chosen: list) -> dict:
    env = summary.get("env") or {}
    own = metrics.get("provenance") or {}
    bundle = summary.get("bundle") or {}
    backend = summary.get("backend") or {}
    train = trained.get("train") or {}
    prov = {
        **own,
        "gpu": env.get("gpu"), "driver": env.get("driver"), "cuda": env.get("cuda"), "cudnn": env.get("cudnn"),
        "torch": own.get("torch") or env.get("torch"), "tvm": env.get("tvm"),
        "device_name": metrics.get("device_name"),
        "bundle_commit": bundle.get("commit"), "bundle_dirty": bundle.get("dirty"), "bundle_created": bundle.get("created"),
        "wall_seconds": metrics.get("wall_seconds"), "epochs": metrics.get("epochs"),
        "epochs_planned": train.get("epochs"), "max_seconds": train.get("max_seconds"),
        "backend": metrics.get("backend"), "matmul_precision": metrics.get("matmul_precision"),
        "status": metrics.get("status"),
        "node": {"started": summary.get("started"), "budget_s": summary.get("budget_s"), "host": summary.get("host")},
        "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"), "imported_from": out_dir.name,
    }
    if chosen:
        prov["node_chosen"] = {k: {"config": new, "used": old} for k, old, new in chosen}
        prov["backend_reason"] = f"node kernel check: {backend.get('reason')}"
    return prov


def import_out(out_dir: Path, config: dict, reference: Path, bench_dir: Path, force: bool = False) -> dict:
    """File OUT's runs, bench CSVs and session record.  Every run is judged before anything is written: an
    import that files no run and refused one writes nothing at all (``result["written"]`` False); one whose
    runs were all kept (a measured reference stays) still files the benchmarks and the session record."""
    out_dir = Path(out_dir)
    summary = read_json(out_dir / "summary.json")
    if summary is None:
        if (out_dir / "summary.json").is_file():
            raise SystemExit(f"{out_dir}/summary.json cannot be read as JSON (a truncated copy?): fetch the node "
                             "job's OUT again; nothing was written")
        raise SystemExit(f"{out_dir}/summary.json is missing: is {out_dir} the OUT of a pipeline.node job?")
    current = {r.key: r for r in resolve_runs(config)}
    result = {"imported": [], "refused": [], "kept": [], "written": False, "session": None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (out_dir / "runs.tgz").is_file():
            _extract(out_dir / "runs.tgz", tmp)
        else:
            print(f"{out_dir} holds no runs.tgz: the node job packed no run (its phases: summary.json); filing its "
                  "benchmark CSVs and session record only", file=sys.stderr)
        archived = summary.get("archive_sha256")
        found = sorted((tmp / "runs").glob("*/*/metrics.json"))
        accepted = []
        for mpath in found:
            src = mpath.parent
            key = f"{src.parent.name}/{src.name}"
            metrics = read_json(mpath) or {}
            trained = metrics.get("spec")
            why = archive_problem(key, src, archived) or refusal(key, trained, current.get(key))
            if why:
                result["refused"].append((key, why))
                print(f"REFUSED {why}", file=sys.stderr)
                continue
            if not force and (msg := keeps_reference(current[key], str(metrics.get("status")), reference)):
                result["kept"].append((key, msg))
                print(f"kept {msg}")
                continue
            accepted.append((key, src, metrics, trained))
        if found and not accepted and result["refused"]:  # fix what refused them, then import the whole job
            print(f"nothing imported from {out_dir}: {len(result['refused'])} run(s) refused, {len(result['kept'])} "
                  "kept; no file was written (not the runs, nor the bench CSVs, nor the session record)",
                  file=sys.stderr)
            return result
        for key, src, metrics, trained in accepted:
            _file_run(key, src, metrics, trained, current[key], summary, out_dir, reference / current[key].filed_as)
            result["imported"].append(key)
    stamp = re.sub(r"[^0-9A-Za-z]", "", (summary.get("started") or "unknown")[:19])
    device = re.sub(r"[^0-9A-Za-z]+", "-", str((summary.get("env") or {}).get("gpu") or summary.get("device"))).strip("-")
    session = reference / "_sessions" / f"{stamp}-{device}"
    session.mkdir(parents=True, exist_ok=True)
    bench_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(out_dir.glob("*.csv")):
        shutil.copyfile(f, bench_dir / f.name)
        shutil.copyfile(f, session / f.name)
        print(f"bench {f.name} -> {bench_dir / f.name}")
    for name in ("summary.json", "check.json"):
        if (out_dir / name).is_file():
            shutil.copyfile(out_dir / name, session / name)
    result["session"], result["written"] = str(session), True
    print(f"{len(result['imported'])} run(s) imported, {len(result['refused'])} refused, {len(result['kept'])} kept; "
          f"node session record: {session}")
    return result


def write_reference(dest: Path, metrics: dict, prov: dict, source: str, files: dict[str, Path],
                    local_root: Path | None = None) -> None:
    """``dest`` (results/reference/<dataset>/<run>/) anew: metrics.json with ``prov``, provenance.json, the
    ``files`` that exist (name there -> file here) and SHA256SUMS over all of them (the tables check these).
    ``local_root``: the working directory a local run was made in; logs name its files relative to it (a tool
    such as lmplz prints absolute paths, which say nothing on another machine)."""
    metrics["provenance"] = prov
    metrics["reference"] = {"imported": prov["imported"], "from": source}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    for name, path in files.items():
        if path.is_file() and local_root is not None and name.endswith(".log"):
            (dest / name).write_text(path.read_text(errors="replace").replace(f"{local_root.resolve()}/", ""))
        elif path.is_file():
            shutil.copyfile(path, dest / name)
    record_dir(dest, [p.name for p in dest.iterdir() if p.name != SUMS])


def _file_run(key: str, src: Path, metrics: dict, trained: dict, run, summary: dict, out_dir: Path,
              dest: Path) -> None:
    """One accepted run into ``dest`` (results/reference/<dataset>/<run>/), with its SHA256SUMS."""
    configured = run.result_spec()["settings"].get("backend")
    used = (trained.get("settings") or {}).get("backend")
    chosen = [("backend", used, configured)] if used != configured else []
    prov = provenance(metrics, summary, trained, out_dir, chosen)
    write_reference(dest, metrics, prov, out_dir.name,
                    {name: src / name for name in ("curve.csv", "train.log", "spec.json", "docs.npz")})
    where = ", ".join(str(v) for v in (metrics.get("device_name"), prov.get("date"),
                                       f"commit {prov.get('commit')}") if v)
    print(f"imported {key} -> {shown_path(dest)} "
          f"({metrics.get('status')}; {where})")


def _local_record_problem(key: str, src: Path) -> str | None:
    """Why a local run's files do not match the SHA256SUMS its training wrote when it ended (None: they do)."""
    sums = read_sums(src / SUMS)
    if not sums:
        return f"{key}: {src / SUMS} is missing, so its files cannot be checked; train it again to file it"
    try:
        verify_dir(src, sorted(set(sums) | {"metrics.json"}), f"train {key} again to file it")
    except IntegrityError as err:
        return f"{key}: {err}"
    return None


def file_local(keys: list[str], config: dict, reference: Path, force: bool = False, work: Path = ROOT) -> dict:
    """File runs trained on this machine (each run's own results folder under the working directory ``work``,
    e.g. the CPU profile's runs, or a KN5 model) as reference runs, as a node job's runs are filed: metrics.json
    with its provenance (CPU model, vector unit and bf16 kind, precision, each training segment), provenance.json,
    curve.csv, train.log (every segment's, from beside the run's checkpoint; else the job's log), spec.json,
    docs.npz and SHA256SUMS, into ``reference/`` + the run's ``filed_as``.  Only a run that ended
    (``measured`` or ``cut short``) is filed; one in progress is refused.  A measured reference of today's
    settings is not replaced by a cut-short run without ``force``."""
    current = {r.key: r for r in resolve_runs(config)}
    result = {"imported": [], "refused": [], "kept": [], "written": False}
    for key in keys:
        if key not in current:  # refusal() says so
            why = refusal(key, None, None)
            result["refused"].append((key, why))
            print(f"REFUSED {why}", file=sys.stderr)
            continue
        src = work / current[key].out_dir
        metrics = read_json(src / "metrics.json")
        status = str((metrics or {}).get("status") or "")
        why = (f"{key}: no {src / 'metrics.json'} (train it first)" if metrics is None else
               refusal(key, metrics.get("spec"), current.get(key)) or
               (None if status == "measured" or status.startswith("cut short") else
                f"{key}: its status is '{status}': only a run that ended is filed (let it finish, or resume it)"))
        if why is None:
            why = _local_record_problem(key, src)
        if why:
            result["refused"].append((key, why))
            print(f"REFUSED {why}", file=sys.stderr)
            continue
        if not force and (msg := keeps_reference(current[key], status, reference)):
            result["kept"].append((key, msg))
            print(f"kept {msg}")
            continue
        dest = reference / current[key].filed_as
        prov = (metrics.get("provenance") or {}) | {
            "device_name": metrics.get("device_name"), "cpu_precision": metrics.get("cpu_precision"),
            "segments": metrics.get("segments"), "spans": metrics.get("spans"),
            "wall_seconds": metrics.get("wall_seconds"), "epochs": metrics.get("epochs"),
            "epochs_planned": ((metrics.get("spec") or {}).get("train") or {}).get("epochs"), "status": status,
            "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"), "imported_from": f"local {key}"}
        files = {name: src / name for name in ("curve.csv", "spec.json", "docs.npz", "curve.png")}
        # the log of every segment (kept beside the checkpoint by the trainer); the job's log has the last one only
        history = work / run_history(current[key].checkpoint)
        log = history if history.is_file() else work / current[key].job_log
        write_reference(dest, metrics, prov, f"trained here ({metrics.get('device_name')})", files | {"train.log": log},
                        local_root=work)
        result["imported"].append(key)
        result["written"] = True
        precision = (metrics.get("cpu_precision") or {}).get("used")  # none for KN5: nothing trained in a precision
        print(f"filed {key} -> {shown_path(dest)} ({status}; "
              f"{metrics.get('device_name')}{f', {precision} training' if precision else ''})")
    return result


def main(argv: list[str] | None = None) -> int:
    from pipeline.profiles import load_config, workdir_of

    ap = argparse.ArgumentParser(prog="./repro import", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", help="the node job's OUT directory")
    ap.add_argument("--local", nargs="+", metavar="DATASET/RUN",
                    help="file these runs trained on this machine (results/runs/...) instead of a node job's OUT")
    ap.add_argument("--profile", help="snakemake profile the bundle was made with (e.g. profiles/tiny)")
    ap.add_argument("--configfile", nargs="+", help="config overlays, as snakemake --configfile")
    ap.add_argument("--config", nargs="+", help="KEY=VALUE, as snakemake --config")
    ap.add_argument("--directory", help="snakemake's working directory, as its --directory, where --local reads "
                    "the runs (default: the profile's `directory:`, e.g. tiny/, else the repository)")
    ap.add_argument("--reference", type=Path, help="where runs are filed (default: results/reference/ of the "
                    "repository; under the tiny profile, of its working directory)")
    ap.add_argument("--bench-dir", type=Path, help="where bench CSVs go (default: results/bench/, likewise)")
    ap.add_argument("--force", action="store_true", help="replace a measured reference by a cut-short one")
    a = ap.parse_args(argv)
    try:
        config = load_config(a.profile, a.configfile, a.config)
        work = workdir_of(a.profile, a.directory)
        reference, bench_dir = filing_roots(config, work)
        reference, bench_dir = a.reference or reference, a.bench_dir or bench_dir
        if a.local:
            result = file_local(a.local, config, reference, a.force, work)
        elif a.out is None:
            ap.error("give the node job's OUT directory, or --local DATASET/RUN ...")
        else:
            result = import_out(a.out, config, reference, bench_dir, a.force)
    except ConfigError as err:
        raise SystemExit(f"config: {err}") from None
    return 1 if result["refused"] or not result["written"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
