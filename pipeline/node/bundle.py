"""Everything an offline GPU node needs beside the repository's files, in one directory.

    ./repro bundle --out .carry/bundle --config mirror=../shared/data              # PTB + WikiText-2, sm_90
    ./repro bundle --out .carry/bundle --datasets ptb --config mirror=../shared/data
    ./repro bundle --out /tmp/b --profile profiles/tiny --target llvm --python 3.11  # CPU rehearsal

The node (:mod:`pipeline.node`) has python3 + torch and nothing else: no network, no TVM
compiler, no snakemake, no git.  The bundle holds, for the runs of the config (config.yaml, the
profile's overlay, ``--configfile`` and ``--config`` merged exactly as the Snakefile merges them)
whose dataset is bundled:

    BUNDLE.json     commit and dirty flag, Python, kernel target and archs, the priority list (less
                    the runs whose measured reference is committed: ``measured``),
                    node settings, benchmark sizes, run keys, sha256 of every data file, sizes
    runs.json       every trained run's resolved spec (pipeline.config.Run.to_dict)
    tvm-runtime/    runtime-only TVM for the node's Python (hmm.kernels.pack_runtime)
    kernels/<t>/    scan kernels (cuda for --arch, or llvm) for every live-state count any run
                    needs (from the runs) plus the kernel and scale benchmarks' sizes
    data/<ds>/      the prepared dataset (vocab.tsv, stats.json, token and document arrays) and
                    clusters/brown-<M>.tsv for every M its runs use (word and cluster columns only:
                    what the runs read; BUNDLE.json records the sha256 of the full file too)

Data and Brown clusters are made by snakemake (the same rules and config as every other run;
already built files are reused); kernels by hmm.kernels.build.  The size, with the repository's
files, is printed and must fit ``--max-mib`` (60 MiB: a node job takes 64 MiB of inputs).
The directory is written beside ``--out`` first and moved into place when complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from hmm.config import ConfigError, HMMConfig
from hmm.kernels import CUDA_MAX_STATES
from pipeline.config import kernel_states, resolve_runs
from pipeline.data.corpus import FILES
from pipeline.integrity import SUMS, record, sha256, verify, verify_dir
from pipeline.node.settings import BUNDLE_FORMAT, node_settings
from pipeline.profiles import load_config, resolve_profile, workdir_of  # noqa: F401 (this module's API too)
from pipeline.provenance import commit_label, git_commit
from pipeline.references import REFERENCE, filing_roots, measured_reference

ROOT = Path(__file__).resolve().parents[2]
DATA_FILES = (*FILES, SUMS)  # a prepared dataset with its SHA-256 records
MIB = 2**20


# ------------------------------------------------------------------------------ config
def node_plan(config: dict, datasets: list[str] | None, target: str, reference: Path | None = REFERENCE) -> dict:
    """What the bundle holds for this config: runs, priority, check runs, kernel sizes, clusters.  A run of the
    priority list with a measured reference run of today's settings (``reference``; None: none counted) is left
    out of the node's priority (``measured``): a node job is too short to spend on a number already filed;
    every run stays in the bundle (the node's ``--runs`` still trains it)."""
    runs = resolve_runs(config)
    by_key = {r.key: r for r in runs}
    trained = [r for r in runs if r.train is not None]
    datasets = list(datasets or sorted({r.dataset for r in trained}))
    unknown = sorted(set(datasets) - set(config["datasets"]))
    if unknown:
        raise ConfigError(f"--datasets: unknown {', '.join(unknown)} (config datasets: {', '.join(config['datasets'])})")
    for key in config.get("priority") or []:
        if key not in by_key:
            raise ConfigError(f"priority: no run {key} in the config's runs")
        if by_key[key].train is None:
            raise ConfigError(f"priority: {key} is a {by_key[key].model} run, not a trained one (the node trains)")
    cfg, check_runs = node_settings(config.get("node"))
    for key in check_runs:
        if key not in by_key or by_key[key].model != "vlnhmm":
            raise ConfigError(f"node.check_runs: {key} is not a VLNHMM run of the config")
    bundled = [r for r in trained if r.dataset in datasets]
    device = "cuda" if target == "cuda" else "cpu"
    bench = config["bench"]
    scale = list((bench.get("scale_states") or {}).get(device, []))
    extra = list(bench["kernel_states"])
    for z in scale:  # bench.scale: n = k' in training, k at evaluation (state dropout 0.5, its default)
        try:
            extra += HMMConfig(num_states=z, num_clusters=bench["scale_num_clusters"]).scan_sizes
        except ConfigError:
            pass
    states = kernel_states(bundled, extra)
    dropped = []
    if target == "cuda":
        dropped = [n for n in states if n > CUDA_MAX_STATES]
        states = [n for n in states if n <= CUDA_MAX_STATES]
    clusters = sorted({(r.dataset, r.settings.num_clusters) for r in bundled
                       if r.model == "vlnhmm" and r.settings.constraint == "brown"})
    priority = list(config.get("priority") or [])
    priority += [r.key for k in priority for r in runs if r.base != r.name and f"{r.dataset}/{r.base}" == k
                 and r.key not in priority]  # seed repeats after every listed run
    priority = [k for k in priority if by_key[k].dataset in datasets]
    measured = [k for k in priority if reference is not None and measured_reference(by_key[k], reference)]
    return {"runs": bundled, "datasets": datasets, "priority": [k for k in priority if k not in measured],
            "measured": measured,
            "check_runs": [k for k in check_runs if by_key[k].dataset in datasets], "node": cfg,
            "kernel_states": states, "dropped_states": dropped, "clusters": clusters,
            "bench": {"kernel_states": list(bench["kernel_states"]), "scale_states": {device: scale},
                      "scale_num_clusters": bench["scale_num_clusters"], "scale_steps": bench["scale_steps"]}}


# ------------------------------------------------------------------------------ steps
def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def repository_bytes(exclude: Path | None = None) -> int:
    """Bytes of the files a node job copies from the tree: tracked plus untracked-not-ignored."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    total = 0
    for rel in filter(None, out.decode().split("\0")):
        path = ROOT / rel
        if path.is_file() and not (exclude and path.resolve().is_relative_to(exclude)):
            total += path.stat().st_size
    return total


def _run(cmd: list[str], log: Path, what: str) -> None:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "\n    ".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}; log {log}):\n    {tail}")
    print(f"[bundle] {what}: done ({time.perf_counter() - start:.0f} s)", flush=True)


def make_data(plan: dict, args, logs: Path) -> Path:
    """Prepared datasets and Brown clusters through snakemake; returns its working directory."""
    targets = [f"data/{ds}/stats.json" for ds in plan["datasets"]]
    targets += [f"data/{ds}/clusters/brown-{m}.tsv" for ds, m in plan["clusters"]]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores)]
    if args.profile:
        cmd += ["--profile", args.profile]
    if args.configfile:
        cmd += ["--configfile", *args.configfile]
    if args.config:
        cmd += ["--config", *args.config]
    if args.directory:
        cmd += ["--directory", args.directory]
    print(f"[bundle] data and Brown clusters ({len(targets)} targets; existing ones are reused) ...", flush=True)
    _run(cmd + ["--", *targets], logs / "snakemake.log", "data and Brown clusters")
    return workdir_of(args.profile, args.directory)


def copy_data(plan: dict, workdir: Path, stage: Path) -> dict:
    files = {}
    for ds in plan["datasets"]:
        verify_dir(workdir / "data" / ds, list(FILES), f"delete {workdir / 'data' / ds} and make the bundle again "
                                                       "(it remakes the data)")
        names = [f"data/{ds}/{f}" for f in DATA_FILES]
        names += [f"data/{ds}/clusters/brown-{m}.tsv" for d, m in plan["clusters"] if d == ds]
        for rel in names:
            src, dst = workdir / rel, stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if "/clusters/" in rel:
                verify(src, f"remake it: `snakemake {rel} --cores 2 --forcerun brown_clusters`")
                slim_clusters(src, dst)
                files[rel] = {"sha256": record(dst), "bytes": dst.stat().st_size,
                              "slimmed_from": {"sha256": sha256(src), "bytes": src.stat().st_size}}
                side = f"{rel}.sha256"
                files[side] = {"sha256": sha256(stage / side), "bytes": (stage / side).stat().st_size}
            else:
                shutil.copyfile(src, dst)
                files[rel] = {"sha256": sha256(dst), "bytes": dst.stat().st_size}
    return files


def slim_clusters(src: Path, dst: Path) -> None:
    """The two columns pipeline.data.clusters.load_clusters reads (word, cluster), same rows in the same
    order: the `bits` merge paths take up to 35 MB per file on full PTB and are not read."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["word", "cluster"]:
            raise SystemExit(f"{src}: unexpected header {header} (want word, cluster, ...)")
        g.write("word\tcluster\n")
        for line in f:
            word, cluster = line.split("\t", 2)[:2]
            g.write(f"{word}\t{cluster.strip()}\n")


def build(args) -> dict:
    t0 = time.perf_counter()
    config = load_config(args.profile, args.configfile, args.config)
    reference = filing_roots(config, workdir_of(args.profile, args.directory))[0]
    plan = node_plan(config, args.datasets, args.target, reference)
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not (out / "BUNDLE.json").is_file():
        raise SystemExit(f"{out} exists, is not empty and holds no BUNDLE.json: not replacing it")
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "logs").mkdir(parents=True)
    logs = stage / "logs"
    print(f"[bundle] {len(plan['runs'])} trained runs of {', '.join(plan['datasets'])}; kernels {args.target}"
          + (f" {' '.join(args.arch)}" if args.target == "cuda" else "") + f" n={plan['kernel_states']}; "
          f"TVM runtime for Python {args.python}", flush=True)
    if plan["measured"]:
        print(f"[bundle] left out of the node's priority, as their measured reference runs are committed: "
              f"{', '.join(plan['measured'])} (the node's --runs still trains them)", flush=True)
    if plan["dropped_states"]:
        print(f"[bundle] note: n={plan['dropped_states']} exceed the CUDA scans' limit {CUDA_MAX_STATES}: "
              "benchmarks use the PyTorch scan there", flush=True)
    workdir = make_data(plan, args, logs)
    files = copy_data(plan, workdir, stage)
    kcmd = [sys.executable, "-m", "hmm.kernels.build", "--target", args.target, "--states",
            *map(str, plan["kernel_states"]), "--out", str(stage / "kernels" / args.target)]
    if args.target == "cuda":
        kcmd += ["--arch", *args.arch]
    _run(kcmd, logs / "kernels.log", f"{args.target} kernels for n={plan['kernel_states']}")
    from hmm.kernels.pack_runtime import pack

    start = time.perf_counter()
    pack(stage / "tvm-runtime", args.python)
    print(f"[bundle] TVM runtime for Python {args.python}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    (stage / "runs.json").write_text(json.dumps([r.to_dict() for r in plan["runs"]], indent=1) + "\n")
    found = git_commit()
    sha, dirty = found if found else ("unknown", False)
    untracked = []
    if found:
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT,
                                   capture_output=True, text=True).stdout.split()
    parts = {name: _size(stage / name) for name in ("tvm-runtime", "kernels", "data", "runs.json")}
    parts.update({f"data/{ds}": _size(stage / "data" / ds) for ds in plan["datasets"]})
    shutil.rmtree(logs)
    manifest = {
        "format": BUNDLE_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": sha, "commit_label": commit_label(sha, dirty) if found else "unknown", "dirty": dirty,
        "untracked": untracked[:50], "profile": args.profile, "configfiles": args.configfile or [],
        "config_overrides": args.config or [], "label": config.get("label"), "datasets": plan["datasets"],
        "target": args.target, "archs": list(args.arch) if args.target == "cuda" else [], "python": args.python,
        "kernel_states": plan["kernel_states"], "priority": plan["priority"], "measured": plan["measured"],
        "node": {"check_runs": plan["check_runs"], **dataclasses.asdict(plan["node"])},
        "bench": plan["bench"], "runs": [r.key for r in plan["runs"]], "files": files,
    }
    (stage / "BUNDLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    bundle_bytes = _size(stage)
    repo_bytes = repository_bytes(exclude=stage)
    total = bundle_bytes + repo_bytes
    manifest["size"] = {"bundle_bytes": bundle_bytes, "repository_bytes": repo_bytes, "total_bytes": total,
                        "limit_mib": args.max_mib, "parts_bytes": parts}
    (stage / "BUNDLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(stage, out)
    detail = ", ".join(f"{k} {v / MIB:.1f}" for k, v in parts.items() if k != "data")
    print(f"[bundle] {out}: {bundle_bytes / MIB:.1f} MiB ({detail}) + repository files {repo_bytes / MIB:.1f} MiB "
          f"= {total / MIB:.1f} MiB of {args.max_mib:g} MiB; commit {manifest['commit_label']}; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    if total > args.max_mib * MIB:
        raise SystemExit(f"bundle too big: {total / MIB:.1f} MiB > {args.max_mib:g} MiB (node inputs: 64 MiB with "
                         "the repository); bundle fewer datasets (--datasets)")
    print(f"[bundle] on the node, from the repository root: python3 -m pipeline.node --bundle {os.path.relpath(out, ROOT)} "
          f"--budget 540 --out $OUT", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="./repro bundle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="bundle directory (replaced if it holds a bundle)")
    ap.add_argument("--datasets", nargs="+", help="datasets to bundle (default: every dataset with trained runs)")
    ap.add_argument("--python", default="3.12", help="the node's Python (X.Y) for the TVM runtime")
    ap.add_argument("--arch", nargs="+", default=["sm_90"], help="CUDA archs of the kernels (H100/H200: sm_90)")
    ap.add_argument("--target", choices=["cuda", "llvm"], default="cuda", help="llvm: a CPU rehearsal bundle")
    ap.add_argument("--profile", help="snakemake profile (e.g. profiles/tiny)")
    ap.add_argument("--configfile", nargs="+", help="config overlays, as snakemake --configfile")
    ap.add_argument("--config", nargs="+", help="KEY=VALUE, as snakemake --config (e.g. mirror=../shared/data)")
    ap.add_argument("--directory", help="snakemake working directory (default: the profile's, else the root)")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores for data and clusters")
    ap.add_argument("--max-mib", type=float, default=60.0, help="most MiB of bundle + repository files")
    args = ap.parse_args(argv)
    try:
        build(args)
    except ConfigError as err:
        raise SystemExit(f"config: {err}") from None


if __name__ == "__main__":
    main()
