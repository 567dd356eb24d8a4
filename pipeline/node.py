"""The GPU node's job: kernel check, benchmarks and the paper's runs inside a fixed time budget.

    python3 -m pipeline.node --bundle .carry/bundle --budget 540 --out $OUT
    python3 -m pipeline.node --bundle B --budget 540 --out OUT --runs ptb/ff ptb/lstm --parallel 2
    python3 -m pipeline.node --bundle B --budget 40 --out OUT --device cpu      # CPU rehearsal (llvm bundle)

Run from the repository root of a copy of the tree, beside a bundle made by ``./repro bundle``
(:mod:`pipeline.bundle`).  Needs python3 >= 3.11, torch and numpy; nothing else (no git, TVM,
snakemake, network, yaml, pandas, matplotlib or tqdm: each is used where present, never needed).
This process imports no torch: every phase runs as a child process (``python -m ...``) with a
time limit, so a crash or a hang in one costs that phase only.  In order:

    env      pipeline.node_check env: GPU, driver, torch, CUDA, the bundle's TVM runtime, commit
    check    pipeline.node_check check: the bundle's kernels against the float64 reference
             (hmm.kernels.check: every n, gradients, poisoned outputs, torch's stream behind a
             GEMM), real potentials of the node.check_runs models and one training step TVM scan
             vs PyTorch scan.  Its verdict picks the scan backend of what follows (--backend auto)
    bench    bench.kernels (TVM vs PyTorch scans), then bench.scale one |Z| per process (rows of
             each size kept as soon as it is done)
    runs     pipeline.train for the runs of --runs or the config's `priority`, in that order, as
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
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hmm.config import ConfigError, Settings, from_dict, setting
from pipeline.integrity import sha256
from pipeline.lifetime import die_with_parent
from pipeline.files import copy_atomic, read_json, write_atomic, write_json

ROOT = Path(__file__).resolve().parent.parent
BUNDLE_FORMAT = 1
MAX_OUT_BYTES = 16 * 2**20       # per file brought back from the node
LOG_TAIL_BYTES = 2**20           # a log longer than this is archived as its last MiB
ENV_FLOOR_S = 15.0              # the env phase runs even past the budget's margin (it takes about a second)
SOLO_ROWS = 3                    # the first run runs alone until its 3rd check (rows 2-3: solo rate)
PHASES = ("env", "check", "bench", "runs")


@dataclass(frozen=True)
class NodeConfig(Settings):
    """Time and parallelism of the node job (config ``node:``; ``check_runs`` is kept apart)."""

    budget: float = setting(540.0, "seconds the node job may take, packing included (--budget)", above=0)
    margin: float = setting(25.0, "seconds kept at the end to stop runs and pack OUT", min=0)
    env_cap: float = setting(30.0, "most seconds for the environment record", above=0)
    check_cap: float = setting(150.0, "most seconds for the kernel check", above=0)
    bench_kernels_cap: float = setting(60.0, "most seconds for bench.kernels", above=0)
    bench_scale_cap: float = setting(150.0, "most seconds for bench.scale (all sizes)", above=0)
    parallel: int = setting(4, "most runs at once (--parallel)", min=1)
    solo_seconds: float = setting(45.0, "the first run runs alone until its 3rd check or this long: the "
                                        "throughput baseline (0: start the others at once)", min=0)
    warm_seconds: float = setting(20.0, "after starting a run wait this long, or for its first check, before "
                                        "measuring its memory and starting the next", min=0)
    memory_headroom: float = setting(1.3, "start another run only if free memory >= this x the largest "
                                          "footprint a run has shown", min=1)
    run_reserve: float = setting(30.0, "seconds of a run's time kept for start-up and final scoring", min=0)
    train_share: float = setting(0.9, "max_seconds = this x (time left - margin - run_reserve); a run's "
                                      "max_seconds counts its whole wall time, checks and final scoring included",
                                 above=0, max=1)
    min_run_seconds: float = setting(60.0, "start no run with less time left than this", min=0)
    pack_every: float = setting(60.0, "seconds between packs of OUT while runs go on", above=0)
    threads: int | None = setting(None, "CPU threads per run (default: 2 with a GPU, cores / parallel "
                                        "without)", min=1)

def node_settings(section: dict | None) -> tuple[NodeConfig, list[str]]:
    """The config's ``node:`` mapping as (NodeConfig, check_runs); ConfigError names a bad key."""
    section = dict(section or {})
    check_runs = list(section.pop("check_runs", []) or [])
    return from_dict(NodeConfig, section, "node"), check_runs


def read_curve(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def log_tail(path: Path, nbytes: int, lines: int) -> list[str]:
    """The last ``lines`` lines within the last ``nbytes`` bytes of a log."""
    return path.read_bytes()[-nbytes:].decode(errors="replace").strip().splitlines()[-lines:]


class Interrupted(Exception):
    """SIGTERM / SIGINT reached the node: stop children, pack, exit."""


@dataclass
class RunProc:
    key: str
    proc: subprocess.Popen
    log: object
    out: Path
    started: float
    max_seconds: float
    free_before: float | None
    rows: list = dataclasses.field(default_factory=list)   # curve rows, stamped with concurrency
    active_min: int = 0
    active_max: int = 0
    warm: bool = False
    curve_mtime: float = 0.0


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
        self.children: dict[int, subprocess.Popen] = {}
        self.active: dict[str, RunProc] = {}   # runs going now
        self.launched = 0
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

    def env(self, threads: int | None = None) -> dict:
        """Environment of every child: the bundle's TVM runtime and this tree on the path, the commit."""
        env = dict(os.environ)
        paths = [str(self.bundle / "tvm-runtime"), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
                   REPRO_COMMIT=str(self.manifest.get("commit_label") or "unknown"))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    def spawn(self, args: list[str], log_path: Path, threads: int | None = None) -> tuple[subprocess.Popen, object]:
        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env(threads), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda parent=os.getpid(): die_with_parent(signal.SIGKILL, parent))
        self.children[proc.pid] = proc
        return proc, log

    @property
    def stop_grace(self) -> float:
        """Seconds a child stopped at a time limit gets between SIGINT and SIGKILL (a third of the margin)."""
        return min(10.0, max(1.0, self.cfg.margin / 3))

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        """SIGINT to the child's process group, SIGKILL after ``grace`` seconds."""
        if proc.poll() is None:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.children.pop(proc.pid, None)

    def call(self, name: str, args: list[str], limit: float, threads: int | None = None) -> dict:
        """Run ``python ARGS`` for at most ``limit`` seconds, output in logs/<name>.log."""
        log_path = self.work / "logs" / f"{name}.log"
        start = time.monotonic()
        proc, log = self.spawn(args, log_path, threads)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop(proc, grace=self.stop_grace)
            rc = proc.returncode
        except BaseException:  # Interrupted: the child goes too
            self.stop(proc, grace=3.0)
            raise
        finally:
            log.close()
            self.children.pop(proc.pid, None)
        tail = log_tail(log_path, 600, 3)
        return {"rc": rc, "seconds": round(time.monotonic() - start, 1), "timed_out": timed_out, "tail": tail}

    def limit(self, cap: float) -> float:
        return min(cap, self.left() - self.cfg.margin)

    def phase(self, name: str, cap: float, fn) -> None:
        """Run one phase with its limit; its record goes to summary["phases"]; OUT is packed after it."""
        if name in self.skip:
            self.summary["phases"][name] = {"status": "skipped: --skip"}
            return
        limit = self.limit(cap)
        if name == "env":  # the environment record (about a second) comes back whatever the budget
            limit = max(limit, min(cap, ENV_FLOOR_S))
        record = self.summary["phases"][name] = {"limit_s": round(limit, 1), "started_s": round(self.elapsed(), 1)}
        if limit < 3:
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
        res = self.call("env", ["-m", "pipeline.node_check", "env", "--bundle", str(self.bundle), "--device",
                                self.device, "--out", str(self.work / "env.json")], limit, threads=2)
        env = read_json(self.work / "env.json")
        self.summary["env"] = env
        if env:
            self.say("env: " + ", ".join(f"{k} {env.get(k)}" for k in ("gpu", "driver", "torch", "cuda", "tvm")
                                         if env.get(k) is not None))
        return {"status": "ok" if res["rc"] == 0 and env else "failed", **res}

    def check_phase(self, limit: float) -> dict:
        args = ["-m", "pipeline.node_check", "check", "--bundle", str(self.bundle), "--device", self.device,
                "--out", str(self.work / "check.json")]
        if self.check_runs:
            args += ["--runs", *self.check_runs]
        res = self.call("check", args, limit, threads=2)
        report = read_json(self.work / "check.json") or {}
        verdict = report.get("verdict") or {}
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
            record["kernels"] = {"rows": rows, **res, "status": self._bench_status(res, rows)}
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
            parts.append({"states": z, "rows": len(rows), **res, "status": self._bench_status(res, len(rows))})
            if rows:
                done.append(part)
                self._merge_csv(done, scsv)
                self.pack()
        record["scale"] = {"backend": backend, "sizes": parts}
        statuses = [record["kernels"]["status"]] + [p["status"] for p in parts]
        record["status"] = "ok" if all(s.startswith(("ok", "skipped")) for s in statuses) else "partial"
        return record

    @staticmethod
    def _bench_status(res: dict, rows: int) -> str:
        if res["timed_out"]:
            return f"cut short: time ({rows} rows)"
        if res["rc"] == 0:
            return f"ok ({rows} rows)"
        if rows:  # e.g. the PNG at the end needs matplotlib: the rows are complete
            return f"ok ({rows} rows; exit {res['rc']} after them: {' '.join(res['tail'][-1:])[:160]})"
        return f"failed: exit {res['rc']}: {' '.join(res['tail'][-1:])[:200]}"

    @staticmethod
    def _merge_csv(parts: list[Path], out: Path) -> None:
        lines: list[str] = []
        for i, part in enumerate(parts):
            text = part.read_text().splitlines()
            lines += text if i == 0 else text[1:]
        write_atomic(out, "\n".join(lines) + "\n")

    # -- runs -------------------------------------------------------------------------------

    def free_mib(self) -> float | None:
        """Free memory where the runs allocate: the GPU's (nvidia-smi), else the host's."""
        if self.device == "cuda":
            smi = shutil.which("nvidia-smi")
            if not smi:
                return None
            gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
            try:
                out = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i",
                                      gpu if gpu.isdigit() else "0"], capture_output=True, text=True, timeout=10)
                return float(out.stdout.split()[0])
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return None
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def run_spec(self, key: str, max_seconds: float) -> dict:
        spec = copy.deepcopy(self.specs[key])
        spec["train"]["device"] = "cuda" if self.device == "cuda" else "cpu"
        spec["train"]["max_seconds"] = round(max_seconds, 1)
        if spec["model"] == "vlnhmm" and self.backend in ("tvm", "torch"):
            spec["settings"]["backend"] = self.backend
        from pipeline.config import Run

        Run.from_dict(spec)  # a value the settings refuse stops here, naming the run and setting
        return spec

    def launch(self, key: str, free_before: float | None, active: int) -> RunProc:
        max_seconds = max(1.0, (self.left() - self.cfg.margin - self.cfg.run_reserve) * self.cfg.train_share)
        spec = self.run_spec(key, max_seconds)
        ds, name = key.split("/")
        spec_path = self.work / "specs" / f"{ds}__{name}.json"
        write_json(spec_path, spec)
        out = self.work / "runs" / ds / name
        out.mkdir(parents=True, exist_ok=True)
        args = ["-m", "pipeline.train", "--spec", str(spec_path), "--data", str(self.bundle / "data" / ds),
                "--kernel-root", str(self.bundle / "kernels"), "--out", str(out),
                "--checkpoint", str(self.work / "ckpt" / ds / name / "ckpt.pt")]
        s = spec["settings"]
        if spec["model"] == "vlnhmm" and s.get("constraint") == "brown":
            args += ["--clusters", str(self.bundle / "data" / ds / "clusters" / f"brown-{s['num_clusters']}.tsv")]
        threads = self.cfg.threads or (2 if self.device == "cuda" else
                                       max(1, (os.cpu_count() or 1) // max(1, min(self.cfg.parallel, len(self.run_keys)))))
        proc, log = self.spawn(args, out / "train.log", threads)
        self.summary["runs"][key] = {"status": "running", "started_s": round(self.elapsed(), 1),
                                     "max_seconds": round(max_seconds, 1), "threads": threads,
                                     "backend": s.get("backend") if spec["model"] == "vlnhmm" else None,
                                     "running_with": active}
        self.launched += 1
        self.say(f"run {key}: start (max_seconds {max_seconds:.0f}, {threads} threads, {active} other run(s) going)")
        return RunProc(key, proc, log, out, time.monotonic(), max_seconds, free_before, active_min=active + 1,
                       active_max=active + 1)

    def poll_curve(self, rp: RunProc, active: int) -> None:
        rp.active_min, rp.active_max = min(rp.active_min, active), max(rp.active_max, active)
        path = rp.out / "curve.csv"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == rp.curve_mtime:
            return
        rp.curve_mtime = mtime
        rows = read_curve(path)
        for row in rows[len(rp.rows):]:
            rp.rows.append({"step": row.get("step"), "epoch": _num(row.get("epoch")),
                            "tokens_per_s": _num(row.get("tokens_per_s")), "valid_ppl": _num(row.get("valid_ppl")),
                            "at_s": round(self.elapsed(), 1), "active_min": rp.active_min,
                            "active_max": rp.active_max})
            rp.active_min = rp.active_max = active

    def finish_run(self, rp: RunProc, rc: int | None, why: str | None = None) -> None:
        rp.log.close()
        self.children.pop(rp.proc.pid, None)
        self.poll_curve(rp, 1)
        metrics = read_json(rp.out / "metrics.json") or {}
        rec = self.summary["runs"][rp.key]
        rec.update(rc=rc, seconds=round(time.monotonic() - rp.started, 1), curve=rp.rows,
                   status=metrics.get("status") or f"failed: exit {rc}, no metrics",
                   **{k: metrics.get(k) for k in ("epochs", "steps", "valid_ppl", "test_ppl", "wall_seconds",
                                                  "seconds_per_epoch", "eval_ms_per_batch", "params",
                                                  "matmul_precision")})
        if why:
            rec["stopped"] = why
        if rc and not metrics:
            rec["error"] = " | ".join(log_tail(rp.out / "train.log", 400, 2))
        self.say(f"run {rp.key}: {rec['status']} (exit {rc}, {rec['seconds']} s; valid ppl {rec.get('valid_ppl')})")

    def runs_phase(self, _limit: float) -> dict:
        keys = []
        for key in self.run_keys:
            if key not in self.specs:
                self.summary["runs"][key] = {"status": "not started: not in the bundle (bundled runs: runs.json)"}
            elif key.split("/")[0] not in self.good_datasets:
                self.summary["runs"][key] = {"status": "not started: its bundled data failed the sha256 check"}
            elif self.specs[key].get("train") is None:
                self.summary["runs"][key] = {"status": "not started: not a trained run"}
            else:
                keys.append(key)
        queue, active, first = list(keys), self.active, None
        footprints: list[float] = []
        last_pack, waiting_memory = time.monotonic(), False
        while True:
            news = False  # a run finished or reached a check: OUT is packed at once (a kill loses nothing)
            for key, rp in list(active.items()):
                rc = rp.proc.poll()
                if rc is not None:
                    del active[key]
                    self.finish_run(rp, rc)
                    news = True
            for rp in active.values():
                checks = len(rp.rows)
                self.poll_curve(rp, len(active))
                news = news or len(rp.rows) > checks
                if not rp.warm and (rp.rows or time.monotonic() - rp.started >= self.cfg.warm_seconds):
                    rp.warm = True
                    free = self.free_mib()
                    if free is not None and rp.free_before is not None:
                        footprints.append(max(rp.free_before - free, 0.0))
                        self.summary["runs"][rp.key]["memory_mib"] = round(footprints[-1])
            if self.left() <= self.cfg.margin:
                for key, rp in list(active.items()):
                    self.stop(rp.proc, grace=self.stop_grace)
                    del active[key]
                    self.finish_run(rp, rp.proc.returncode, "stopped at the node deadline (SIGINT/SIGKILL)")
                break
            if queue and self.left() - self.cfg.margin < self.cfg.min_run_seconds:
                for key in queue:
                    self.summary["runs"][key] = {"status": f"not started: {self.left():.0f} s left "
                                                           f"(node.min_run_seconds {self.cfg.min_run_seconds:g})"}
                queue = []
            if not queue and not active:
                break
            if queue and self._may_launch(active, first, footprints, waiting_memory):
                free = self.free_mib()
                need = max(footprints) * self.cfg.memory_headroom if footprints else 0.0
                if free is not None and free < need:
                    if not waiting_memory:
                        self.say(f"waiting for memory: {free:.0f} MiB free, a run has needed {max(footprints):.0f}")
                    waiting_memory = True
                else:
                    waiting_memory = False
                    key = queue.pop(0)
                    try:
                        rp = self.launch(key, free, len(active))
                    except ConfigError as err:
                        self.summary["runs"][key] = {"status": f"not started: {err}"}
                    else:
                        active[key] = rp
                        first = first or rp
            if news or time.monotonic() - last_pack >= self.cfg.pack_every:
                self.pack()
                last_pack = time.monotonic()
            time.sleep(0.5)
        self.summary["throughput"] = throughput(self.summary["runs"])
        started = [k for k, r in self.summary["runs"].items() if "started_s" in r]
        return {"status": f"{len(started)} of {len(self.run_keys)} run(s) started", "order": self.run_keys}

    def _may_launch(self, active: dict, first: RunProc | None, footprints: list, waiting_memory: bool) -> bool:
        if len(active) >= self.cfg.parallel:
            return False
        if any(not rp.warm for rp in active.values()):
            return False  # its memory is not known yet
        if first is not None and first.key in active and self.cfg.solo_seconds > 0:
            alone = len(first.rows) < SOLO_ROWS and time.monotonic() - first.started < self.cfg.solo_seconds
            if alone and self.launched == 1:
                return False
        return True

    # -- packing ----------------------------------------------------------------------------

    def pack(self) -> None:
        """Write what exists so far to OUT (idempotent; each file replaced atomically)."""
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        for key, rp in self.active.items():  # runs going on: their checks so far
            self.summary["runs"][key]["curve"] = rp.rows
        if any(rec.get("curve") for rec in self.summary["runs"].values()):
            self.summary["throughput"] = throughput(self.summary["runs"])
        self.summary["packed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for tail in (LOG_TAIL_BYTES, 64 * 1024):
            data, digests = self._archive(tail)
            if len(data) <= MAX_OUT_BYTES:
                break
        # ./repro import checks every file of runs.tgz against these (an archive edited later is refused)
        self.summary["archive_sha256"] = digests
        write_atomic(self.out / "runs.tgz", data)
        write_json(self.out / "summary.json", self.summary, indent=1, default=str)
        for src in (self.work / "check.json", self.work / "bench" / f"kernel_{self.device}.csv",
                    self.work / "bench" / f"scale_{self.device}.csv"):
            if src.is_file():
                copy_atomic(src, self.out / src.name)
        copy_atomic(self.work / "logs" / "node.log", self.out / "node.log")

    def _archive(self, tail: int) -> tuple[bytes, dict[str, str]]:
        """runs.tgz's bytes and the SHA-256 of each member as archived."""
        buf, digests = io.BytesIO(), {}
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            def add(path: Path, arcname: str) -> None:
                data = path.read_bytes()
                if path.suffix == ".log" and len(data) > tail:
                    data = b"[... cut: last %d bytes follow]\n" % tail + data[-tail:]
                digests[arcname] = hashlib.sha256(data).hexdigest()
                info = tarfile.TarInfo(arcname)
                info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
                tar.addfile(info, io.BytesIO(data))
            for path in sorted((self.work / "runs").rglob("*")):
                if path.is_file() and path.suffix in (".json", ".csv", ".log", ".npz"):  # .npz: scores per document
                    add(path, "runs/" + str(path.relative_to(self.work / "runs")))
            for path in sorted((self.work / "logs").glob("*")):
                if path.is_file():
                    add(path, f"logs/{path.name}")
            if (self.work / "env.json").is_file():
                add(self.work / "env.json", "logs/env.json")
        return buf.getvalue(), digests

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
            self.phase("runs", self.left(), self.runs_phase)
        except Interrupted as sig:
            code = 130
            self.note(f"interrupted by {sig}: stopping children and packing")
            for key, rp in list(self.active.items()):
                self.stop(rp.proc, grace=3.0)
                del self.active[key]
                self.finish_run(rp, rp.proc.returncode, f"stopped: the node job was interrupted ({sig})")
            for proc in list(self.children.values()):
                self.stop(proc, grace=3.0)
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


def throughput(runs: dict) -> dict:
    """Tokens/s of each run by how many runs were going during each of its check intervals (the
    first interval, with start-up, left out); with a solo baseline, the estimated total gain."""
    per_run, ratios = {}, []
    for key, rec in runs.items():
        rows = [r for r in (rec.get("curve") or [])[1:] if r.get("tokens_per_s")]
        by: dict[int, list[float]] = {}
        for r in rows:
            if r["active_min"] == r["active_max"]:
                by.setdefault(r["active_max"], []).append(r["tokens_per_s"])
        if not by:
            continue
        med = {k: round(statistics.median(v)) for k, v in sorted(by.items())}
        per_run[key] = {"tokens_per_s_by_runs_going": med, "rows": len(rows)}
        if 1 in med:
            for k, v in med.items():
                if k > 1:
                    ratios.append((key, k, v / med[1]))
    out = {"per_run": per_run, "verdict": None}
    if ratios:
        key, k, r = max(ratios, key=lambda t: t[1])
        gain = k * r
        out["estimate"] = {"run": key, "runs_going": k, "own_rate_vs_alone": round(r, 3),
                           "total_gain_if_all_slow_alike": round(gain, 2)}
        out["verdict"] = (f"{key} ran at x{r:.2f} of its solo rate with {k} runs going: about x{gain:.1f} total "
                          f"throughput if the others slowed alike -> running several at once "
                          f"{'raises' if gain > 1.05 else 'does not raise'} throughput")
    else:
        out["verdict"] = "not measured: no run had check intervals both alone and with others going"
    return out


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


if __name__ == "__main__":
    raise SystemExit(main())
