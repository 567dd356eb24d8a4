"""The node's runs phase: pipeline.training.train for each run in priority order, as many at once as
node.parallel and the free memory allow (decisions: pipeline.node.schedule), each with max_seconds from the
time left; their checks are read from curve.csv as they come, and what finished is recorded in the summary."""
from __future__ import annotations

import copy
import csv
import os
import time
from pathlib import Path

from hmm.config import ConfigError
from pipeline.files import read_json, write_json
from pipeline.node import schedule
from pipeline.node.children import free_mib, log_tail
from pipeline.node.schedule import RunProc, throughput


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


class Runs:
    """The runs of one node job (``node``: the job, for its settings, clock, log, children and summary)."""

    def __init__(self, node):
        self.node = node
        self.active: dict[str, RunProc] = {}   # runs going now
        self.launched = 0

    def run_spec(self, key: str, max_seconds: float) -> dict:
        spec = copy.deepcopy(self.node.specs[key])
        spec["train"]["device"] = "cuda" if self.node.device == "cuda" else "cpu"
        spec["train"]["max_seconds"] = round(max_seconds, 1)
        if spec["model"] == "vlnhmm" and self.node.backend in ("tvm", "torch"):
            spec["settings"]["backend"] = self.node.backend
        from pipeline.config import Run

        Run.from_dict(spec)  # a value the settings refuse stops here, naming the run and setting
        return spec

    def launch(self, key: str, free_before: float | None, active: int) -> RunProc:
        max_seconds = schedule.run_max_seconds(self.node.cfg, self.node.left())
        spec = self.run_spec(key, max_seconds)
        ds, name = key.split("/")
        spec_path = self.node.work / "specs" / f"{ds}__{name}.json"
        write_json(spec_path, spec)
        out = self.node.work / "runs" / ds / name
        out.mkdir(parents=True, exist_ok=True)
        args = ["-m", "pipeline.training.train", "--spec", str(spec_path), "--data", str(self.node.bundle / "data" / ds),
                "--kernel-root", str(self.node.bundle / "kernels"), "--out", str(out),
                "--checkpoint", str(self.node.work / "ckpt" / ds / name / "ckpt.pt"),
                "--no-checkpoint"]  # none could come back: each check would write the model and optimizer for nothing
        s = spec["settings"]
        if spec["model"] == "vlnhmm" and s.get("constraint") == "brown":
            args += ["--clusters", str(self.node.bundle / "data" / ds / "clusters" / f"brown-{s['num_clusters']}.tsv")]
        threads = schedule.run_threads(self.node.cfg, self.node.device, os.cpu_count(), len(self.node.run_keys))
        proc, log = self.node.kids.spawn(args, out / "train.log", threads)
        self.node.summary["runs"][key] = {"status": "running", "started_s": round(self.node.elapsed(), 1),
                                     "max_seconds": round(max_seconds, 1), "threads": threads,
                                     "backend": s.get("backend") if spec["model"] == "vlnhmm" else None,
                                     "running_with": active}
        self.launched += 1
        self.node.say(f"run {key}: start (max_seconds {max_seconds:.0f}, {threads} threads, {active} other run(s) going)")
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
                            "at_s": round(self.node.elapsed(), 1), "active_min": rp.active_min,
                            "active_max": rp.active_max})
            rp.active_min = rp.active_max = active

    def progress(self) -> None:
        """The runs going on, as OUT is about to hold them: their checks so far, and the status their metrics.json
        has now (``incomplete: ...`` after a check; the archive packs that same file), so that summary.json and
        runs.tgz say the same of a run should the node be killed before it finishes."""
        for key, rp in self.active.items():
            rec = self.node.summary["runs"][key]
            rec["curve"] = rp.rows
            rec["status"] = (read_json(rp.out / "metrics.json") or {}).get("status") or "running"

    def finish_run(self, rp: RunProc, rc: int | None, why: str | None = None) -> str:
        """Record a run that ended in the summary; returns the line to log once OUT is packed with it (a kill
        between the two then never leaves a log that says more than OUT holds)."""
        rp.log.close()
        self.node.kids.forget(rp.proc)
        self.poll_curve(rp, 1)
        metrics = read_json(rp.out / "metrics.json") or {}
        rec = self.node.summary["runs"][rp.key]
        rec.update(rc=rc, seconds=round(time.monotonic() - rp.started, 1), curve=rp.rows,
                   status=metrics.get("status") or f"failed: exit {rc}, no metrics",
                   **{k: metrics.get(k) for k in ("epochs", "steps", "valid_ppl", "test_ppl", "wall_seconds",
                                                  "seconds_per_epoch", "eval_ms_per_batch", "params",
                                                  "matmul_precision")})
        if why:
            rec["stopped"] = why
        if rc and not metrics:
            rec["error"] = " | ".join(log_tail(rp.out / "train.log", 400, 2))
        return f"run {rp.key}: {rec['status']} (exit {rc}, {rec['seconds']} s; valid ppl {rec.get('valid_ppl')})"

    def finish_and_pack(self, ended: list[tuple[RunProc, int | None, str | None]]) -> None:
        """Record the runs that ended, pack OUT once, then log them."""
        lines = [self.finish_run(rp, rc, why) for rp, rc, why in ended]
        if lines:
            self.node.pack()
        for line in lines:
            self.node.say(line)

    def phase(self, _limit: float) -> dict:
        keys, refused = schedule.runnable(self.node.run_keys, self.node.specs, self.node.good_datasets)
        self.node.summary["runs"].update({key: {"status": why} for key, why in refused.items()})
        queue, active, first = list(keys), self.active, None
        footprints: list[float] = []
        last_pack, waiting_memory = time.monotonic(), False
        while True:
            news = False  # a run finished or reached a check: OUT is packed at once (a kill loses nothing)
            polled = [(key, rp.proc.poll()) for key, rp in active.items()]
            ended = [(active.pop(key), rc, None) for key, rc in polled if rc is not None]
            if ended:
                self.finish_and_pack(ended)
                last_pack = time.monotonic()
            for rp in active.values():
                checks = len(rp.rows)
                self.poll_curve(rp, len(active))
                news = news or len(rp.rows) > checks
                if not rp.warm and schedule.is_warm(self.node.cfg, rp, time.monotonic()):
                    rp.warm = True
                    free = free_mib(self.node.device)
                    if free is not None and rp.free_before is not None:
                        footprints.append(max(rp.free_before - free, 0.0))
                        self.node.summary["runs"][rp.key]["memory_mib"] = round(footprints[-1])
            if self.node.left() <= self.node.cfg.margin:  # all at once: one grace period, not one per run
                self.node.kids.stop_together([rp.proc for rp in active.values()], schedule.stop_grace(self.node.cfg))
                why = "stopped at the node deadline (SIGINT/SIGKILL)"
                self.finish_and_pack([(active.pop(key), rp.proc.returncode, why) for key, rp in list(active.items())])
                break
            if queue and schedule.too_late(self.node.cfg, self.node.left()):
                for key in queue:
                    self.node.summary["runs"][key] = {"status": f"not started: {self.node.left():.0f} s left "
                                                           f"(node.min_run_seconds {self.node.cfg.min_run_seconds:g})"}
                queue = []
            if not queue and not active:
                break
            if queue and schedule.may_launch(self.node.cfg, active, first, self.launched, time.monotonic()):
                free = free_mib(self.node.device)
                need = schedule.memory_needed(self.node.cfg, footprints)
                if free is not None and free < need:
                    if not waiting_memory:
                        self.node.say(f"waiting for memory: {free:.0f} MiB free, a run has needed {max(footprints):.0f}")
                    waiting_memory = True
                else:
                    waiting_memory = False
                    key = queue.pop(0)
                    try:
                        rp = self.launch(key, free, len(active))
                    except ConfigError as err:
                        self.node.summary["runs"][key] = {"status": f"not started: {err}"}
                    else:
                        active[key] = rp
                        first = first or rp
            if news or time.monotonic() - last_pack >= self.node.cfg.pack_every:
                self.node.pack()
                last_pack = time.monotonic()
            time.sleep(0.5)
        self.node.summary["throughput"] = throughput(self.node.summary["runs"])
        started = [k for k, r in self.node.summary["runs"].items() if "started_s" in r]
        return {"status": f"{len(started)} of {len(self.node.run_keys)} run(s) started", "order": self.node.run_keys}

    def stop_all(self, why: str) -> None:
        """Stop every run going (SIGINT to all, SIGKILL 3 s later) and record it with ``why``."""
        self.node.kids.stop_together([rp.proc for rp in self.active.values()], grace=3.0)
        self.finish_and_pack([(self.active.pop(key), rp.proc.returncode, why) for key, rp in list(self.active.items())])
