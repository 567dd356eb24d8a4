"""The GPU node's job: kernel check, benchmarks and the paper's runs inside a fixed time budget.

    python3 -m pipeline.node --bundle .carry/bundle --budget 540 --out $OUT
    python3 -m pipeline.node --bundle B --budget 540 --out OUT --runs ptb/ff ptb/lstm --parallel 2
    python3 -m pipeline.node --bundle B --budget 40 --out OUT --device cpu      # CPU rehearsal (llvm bundle)

Run from the repository root of a copy of the tree, beside a bundle made by ``./repro bundle``
(:mod:`pipeline.node.bundle`).  Needs python3 >= 3.11, torch and numpy; nothing else (no git, TVM,
snakemake, network, yaml, pandas, matplotlib or tqdm: each is used where present, never needed).
This process imports no torch: every phase runs as a child process (``python -m ...``) with a
time limit, so a crash or a hang in one costs that phase only.  In order:

    env      pipeline.node.check env: GPU, driver, torch, CUDA, the bundle's TVM runtime, commit
    check    pipeline.node.check check: the bundle's kernels against the float64 reference
             (hmm.kernels.check: every n, gradients, poisoned outputs, torch's stream behind a
             GEMM), real potentials of the node.check_runs models and one training step TVM scan
             vs PyTorch scan.  Its verdict picks the scan backend of what follows (--backend auto)
    bench    bench.kernels (TVM vs PyTorch scans), then bench.scale one |Z| per process (rows of
             each size kept as soon as it is done)
    runs     pipeline.training.train for the runs of --runs or the config's `priority`, in that order, as
             many at once as node.parallel and the free memory allow (the first one runs alone
             for a while: the throughput baseline), each with max_seconds set from the time left,
             so it stops at its last validation check with status ``cut short: time ...``

Budget: phase P may take min(node.<P>_cap, time left - node.margin); a run's max_seconds is
node.train_share x (time left - node.margin - node.run_reserve) when it starts, and whatever
still runs at (deadline - margin) is stopped (SIGINT, then SIGKILL).  OUT is rewritten after every
phase and every node.pack_every seconds during the runs (a later phase never spoils an earlier
one; SIGTERM / SIGINT pack too).  OUT holds at most 6 files, none in folders:

    summary.json         environment, bundle, phases (limit, seconds, status), backend verdict,
                         every run (status, epochs, perplexities, s, tok/s), the throughput record
    check.json           the kernel check (rows, model rows, verdict)
    kernel_<device>.csv  bench.kernels rows      scale_<device>.csv  bench.scale rows
    runs.tgz             runs/<dataset>/<name>/{spec.json, metrics.json, curve.csv, train.log},
                         logs/ (every phase's log, env.json)
    node.log             this job's log

``./repro import OUT`` on the CPU machine then files the runs under results/reference/.

This module holds the phases and their order; beside it: children (the processes), schedule (every
decision of when and how long, testable without a process), runs (the runs phase), archive (OUT),
settings (NodeConfig).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from hmm.config import ConfigError
from pipeline.files import read_json, write_atomic
from pipeline.integrity import sha256
from pipeline.node import archive, schedule
from pipeline.node.children import Children
from pipeline.node.runs import Runs, read_curve
from pipeline.node.schedule import throughput
from pipeline.node.settings import BUNDLE_FORMAT, PHASES, node_settings


class Interrupted(Exception):
    """SIGTERM / SIGINT reached the node: stop children, pack, exit."""


class Node:
    """One node job (see the module docstring)."""

    def __init__(self, bundle: Path, out: Path, budget: float | None = None, device: str = "cuda",
                 runs: list[str] | None = None, parallel: int | None = None, backend: str = "auto",
                 skip: tuple[str, ...] = (), work: Path | None = None):
        self.t0 = time.monotonic()
        self.bundle, self.out = bundle.resolve(), out.resolve()
        self.manifest = read_json(self.bundle / "BUNDLE.json")
        if self.manifest is None:
            raise SystemExit(f"{self.bundle}/BUNDLE.json is missing or unreadable: make the bundle with "
                             "`./repro bundle --out DIR` on the CPU machine")
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise SystemExit(f"bundle format {self.manifest.get('format')} is not {BUNDLE_FORMAT}: remake it "
                             "with this commit's ./repro bundle")
        cfg, self.check_runs = node_settings(self.manifest.get("node"))
        changes = {k: v for k, v in (("budget", budget), ("parallel", parallel)) if v is not None}
        self.cfg = dataclasses.replace(cfg, **changes)
        self.deadline = self.t0 + self.cfg.budget
        self.device, self.backend_mode, self.skip = device, backend, set(skip)
        self.target = "cuda" if device == "cuda" else "llvm"
        self.specs = {f"{s['dataset']}/{s['name']}": s for s in json.loads((self.bundle / "runs.json").read_text())}
        self.run_keys = list(runs) if runs else list(self.manifest.get("priority", []))
        self.work = Path(work or tempfile.mkdtemp(prefix="node-")).resolve()
        for sub in ("logs", "runs", "ckpt", "bench", "specs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.kids = Children(self.bundle, self.manifest.get("commit_label"), self.work / "logs")
        self.runs = Runs(self)
        self.good_datasets: set[str] = set()
        self.backend = "torch"
        self.summary = {
            "node": "pipeline.node", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_s": self.cfg.budget, "device": device, "host": platform.node(),
            "python": platform.python_version(), "argv": sys.argv[1:],
            "bundle": {k: self.manifest.get(k) for k in ("commit", "commit_label", "dirty", "created", "target",
                                                          "archs", "python", "datasets", "profile")},
            "node_config": dataclasses.asdict(self.cfg), "check_runs": self.check_runs,
            "phases": {}, "backend": None, "runs": {}, "throughput": None, "notes": [],
        }

    # -- time, logging, children ------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.work / "logs" / "node.log", "a") as f:
            f.write(line + "\n")

    def note(self, msg: str) -> None:
        self.summary["notes"].append(msg)
        self.say(msg)

    def call(self, name: str, args: list[str], limit: float, threads: int | None = None) -> dict:
        return self.kids.call(name, args, limit, schedule.stop_grace(self.cfg), threads)

    def phase(self, name: str, cap: float, fn) -> None:
        """Run one phase with its limit; its record goes to summary["phases"]; OUT is packed after it."""
        if name in self.skip:
            self.summary["phases"][name] = {"status": "skipped: --skip"}
            return
        limit = schedule.phase_limit(name, cap, self.left(), self.cfg.margin)
        record = self.summary["phases"][name] = {"limit_s": round(limit, 1), "started_s": round(self.elapsed(), 1)}
        if limit < schedule.MIN_PHASE_S:
            record["status"] = f"skipped: {max(self.left(), 0):.0f} s left, {self.cfg.margin:g} s kept for packing"
            self.say(f"{name}: {record['status']}")
            return
        self.say(f"{name}: start (limit {limit:.0f} s)")
        try:
            record.update(fn(limit))
        except Interrupted:
            record["status"] = "interrupted"
            raise
        except Exception as err:  # noqa: BLE001 - a failing phase is recorded; later phases still run
            record["status"] = f"error: {type(err).__name__}: {err}"
        record["seconds"] = round(self.elapsed() - record["started_s"], 1)
        self.say(f"{name}: {record.get('status')} ({record['seconds']} s)")
        self.pack()

    # -- phases -----------------------------------------------------------------------------

    def verify_bundle(self) -> set[str]:
        """Datasets whose bundled files all match BUNDLE.json's sha256 (others: runs skipped)."""
        bad: dict[str, list[str]] = {}
        for rel, info in (self.manifest.get("files") or {}).items():
            path = self.bundle / rel
            if not path.is_file() or path.stat().st_size != info["bytes"] or sha256(path) != info["sha256"]:
                bad.setdefault(rel.split("/")[1] if rel.startswith("data/") else rel.split("/")[0], []).append(rel)
        self.summary["bundle"]["integrity"] = "ok" if not bad else {k: v[:5] for k, v in bad.items()}
        if bad:
            self.note(f"bundle files missing or changed (sha256): {bad}")
        return set(self.manifest.get("datasets", [])) - set(bad)

    def env_phase(self, limit: float) -> dict:
        res = self.call("env", ["-m", "pipeline.node.check", "env", "--bundle", str(self.bundle), "--device",
                                self.device, "--out", str(self.work / "env.json")], limit, threads=2)
        env = read_json(self.work / "env.json")
        self.summary["env"] = env
        if env:
            self.say("env: " + ", ".join(f"{k} {env.get(k)}" for k in ("gpu", "driver", "torch", "cuda", "tvm")
                                         if env.get(k) is not None))
        return {"status": "ok" if res["rc"] == 0 and env else "failed", **res}

    def check_phase(self, limit: float) -> dict:
        args = ["-m", "pipeline.node.check", "check", "--bundle", str(self.bundle), "--device", self.device,
                "--out", str(self.work / "check.json")]
        if self.check_runs:
            args += ["--runs", *self.check_runs]
        res = self.call("check", args, limit, threads=2)
        report = read_json(self.work / "check.json") or {}
        verdict = report.get("verdict") or {}
        if report.get("normalizer"):
            self.summary["normalizer"] = report["normalizer"]
            self.say("transition normalizer: " + ", ".join(f"{p} {got['impl']}" for p, got in report["normalizer"].items()))
        ok = res["rc"] == 0 and verdict.get("backend") == "tvm"
        why = verdict.get("reason") or ("timed out" if res["timed_out"] else f"exit {res['rc']}")
        self.set_backend("tvm" if ok else "torch", why)
        return {"status": "passed" if ok else f"failed: {why}", **res}

    def set_backend(self, verdict: str, why: str) -> None:
        chosen = verdict if self.backend_mode == "auto" else self.backend_mode
        self.backend = chosen
        self.summary["backend"] = {"check": verdict, "reason": why, "mode": self.backend_mode,
                                   "runs": chosen if chosen != "config" else "as configured",
                                   "bench": chosen if chosen in ("tvm", "torch") else verdict}
        self.say(f"scan backend: check says {verdict} ({why}); runs use {self.summary['backend']['runs']}")

    def bench_phase(self, limit: float) -> dict:
        bench = self.manifest.get("bench") or {}
        kdir = str(self.bundle / "kernels" / self.target)
        backend = self.summary["backend"]["bench"] if self.summary.get("backend") else "torch"
        record: dict = {}
        end = time.monotonic() + limit
        kcsv = self.work / "bench" / f"kernel_{self.device}.csv"
        if backend != "tvm":
            record["kernels"] = {"status": "skipped: the kernel check did not pass (no TVM timings of unchecked kernels)"}
        else:
            lim = min(self.cfg.bench_kernels_cap, end - time.monotonic())
            res = self.call("bench_kernels", ["-m", "bench.kernels", "--device", self.device, "--states",
                                              *map(str, bench.get("kernel_states", [])), "--kernels", kdir,
                                              "--out", str(kcsv)], lim)
            rows = len(read_curve(kcsv))
            record["kernels"] = {"rows": rows, **res, "status": bench_status(res, rows)}
            self.pack()
        scsv = self.work / "bench" / f"scale_{self.device}.csv"
        sizes = (bench.get("scale_states") or {}).get(self.device, [])
        done, parts = [], []
        end_scale = min(end, time.monotonic() + self.cfg.bench_scale_cap)
        for z in sizes:
            lim = end_scale - time.monotonic()
            if lim < 5:
                parts.append({"states": z, "status": "skipped: out of time"})
                continue
            part = self.work / "bench" / f"scale_{self.device}_{z}.csv"
            res = self.call(f"bench_scale_{z}", ["-m", "bench.scale", "--device", self.device, "--states", str(z),
                                                 "--num-clusters", str(bench.get("scale_num_clusters", 128)),
                                                 "--steps", str(bench.get("scale_steps", 5)), "--backend", backend,
                                                 "--kernels", kdir, "--out", str(part)], lim)
            rows = read_curve(part)
            parts.append({"states": z, "rows": len(rows), **res, "status": bench_status(res, len(rows))})
            if rows:
                done.append(part)
                merge_csv(done, scsv)
                self.pack()
        record["scale"] = {"backend": backend, "sizes": parts}
        statuses = [record["kernels"]["status"]] + [p["status"] for p in parts]
        record["status"] = "ok" if all(s.startswith(("ok", "skipped")) for s in statuses) else "partial"
        return record

    # -- packing ----------------------------------------------------------------------------

    def pack(self) -> None:
        """Write what exists so far to OUT (idempotent; each file replaced atomically)."""
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        self.runs.progress()  # runs going on: their checks so far and their status as runs.tgz holds it
        if any(rec.get("curve") for rec in self.summary["runs"].values()):
            self.summary["throughput"] = throughput(self.summary["runs"])
        self.summary["packed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        archive.pack(self.summary, self.work, self.out, self.device)

    # -- the job ----------------------------------------------------------------------------

    def run(self) -> int:
        def interrupt(signum, _frame):
            raise Interrupted(signal.Signals(signum).name)

        old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
        code = 0
        try:
            self.say(f"node job: bundle {self.bundle} (commit {self.manifest.get('commit_label')}), budget "
                     f"{self.cfg.budget:g} s, device {self.device}, work {self.work}, out {self.out}")
            if self.manifest.get("python") != f"{sys.version_info.major}.{sys.version_info.minor}":
                self.note(f"the bundle's TVM runtime is for Python {self.manifest.get('python')}, this is "
                          f"{platform.python_version()}: kernel loads will fail, the check will say so")
            if self.manifest.get("target") != self.target:
                self.note(f"the bundle holds {self.manifest.get('target')} kernels; --device {self.device} needs "
                          f"{self.target}: the check will fail and the runs use the PyTorch scan")
            self.good_datasets = self.verify_bundle()
            self.pack()
            self.phase("env", self.cfg.env_cap, self.env_phase)
            if "check" in self.skip:
                self.set_backend("torch", "check skipped (--skip check)")
            self.phase("check", self.cfg.check_cap, self.check_phase)
            if self.summary["backend"] is None:
                self.set_backend("torch", "the check did not run")
            self.phase("bench", self.cfg.bench_kernels_cap + self.cfg.bench_scale_cap, self.bench_phase)
            self.phase("runs", self.left(), self.runs.phase)
        except Interrupted as sig:
            code = 130
            self.note(f"interrupted by {sig}: stopping children and packing")
            self.runs.stop_all(f"stopped: the node job was interrupted ({sig})")
            self.kids.stop_all(grace=3.0)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            self.summary["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.say(self.table())
            self.pack()
        return code

    def table(self) -> str:
        lines = [f"done in {self.elapsed():.0f} s of {self.cfg.budget:g}; backend "
                 f"{(self.summary.get('backend') or {}).get('runs')}; OUT: {', '.join(sorted(os.listdir(self.out)))}"]
        for name, rec in self.summary["phases"].items():
            lines.append(f"  phase {name:6s} {rec.get('status')}")
        for key, rec in self.summary["runs"].items():
            lines.append(f"  run {key:28s} {str(rec.get('status'))[:70]:70s} valid {rec.get('valid_ppl')} "
                         f"test {rec.get('test_ppl')}")
        tp = self.summary.get("throughput") or {}
        if tp.get("verdict"):
            lines.append(f"  throughput: {tp['verdict']}")
        return "\n".join(lines)


def bench_status(res: dict, rows: int) -> str:
    if res["timed_out"]:
        return f"cut short: time ({rows} rows)"
    if res["rc"] == 0:
        return f"ok ({rows} rows)"
    if rows:  # e.g. the PNG at the end needs matplotlib: the rows are complete
        return f"ok ({rows} rows; exit {res['rc']} after them: {' '.join(res['tail'][-1:])[:160]})"
    return f"failed: exit {res['rc']}: {' '.join(res['tail'][-1:])[:200]}"

def merge_csv(parts: list[Path], out: Path) -> None:
    lines: list[str] = []
    for i, part in enumerate(parts):
        text = part.read_text().splitlines()
        lines += text if i == 0 else text[1:]
    write_atomic(out, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="directory made by ./repro bundle")
    ap.add_argument("--out", type=Path, required=True, help="result directory (at most 6 files)")
    ap.add_argument("--budget", type=float, help="seconds for the whole job (default: the bundle's node.budget)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: rehearsal with a llvm bundle")
    ap.add_argument("--runs", nargs="+", help="run keys (dataset/name) in the order to start them "
                                              "(default: the config's priority list)")
    ap.add_argument("--parallel", type=int, help="most runs at once (default: node.parallel)")
    ap.add_argument("--backend", choices=["auto", "tvm", "torch", "config"], default="auto",
                    help="scan of the VLNHMM runs: auto = tvm if the kernel check passed, else torch")
    ap.add_argument("--skip", nargs="+", choices=PHASES, default=[], help="phases to leave out")
    ap.add_argument("--work", type=Path, help="scratch directory (checkpoints; default: a new one in /tmp)")
    a = ap.parse_args(argv)
    try:
        node = Node(a.bundle, a.out, a.budget, a.device, a.runs, a.parallel, a.backend, tuple(a.skip), a.work)
    except ConfigError as err:
        raise SystemExit(f"error: bundle node settings: {err}") from None
    return node.run()

