"""The node's decisions, as functions of what it knows (no process is started here): each phase's time
limit, which runs may start, when the next one may start, its time and threads, and what running several
at once did to throughput."""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from pipeline.node.settings import NodeConfig

ENV_FLOOR_S = 15.0              # the env phase runs even past the budget's margin (it takes about a second)
SOLO_ROWS = 3                    # the first run runs alone until its 3rd check (rows 2-3: solo rate)
MIN_PHASE_S = 3.0                # a phase with less time than this is skipped


@dataclass
class RunProc:
    """A run going on: its process, where it writes, and the checks seen so far."""
    key: str
    proc: object                  # subprocess.Popen
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


def phase_limit(name: str, cap: float, left: float, margin: float) -> float:
    """Seconds phase ``name`` may take: its cap, within the time left less the margin; the environment
    record (about a second) comes back whatever the budget."""
    limit = min(cap, left - margin)
    if name == "env":
        limit = max(limit, min(cap, ENV_FLOOR_S))
    return limit


def stop_grace(cfg: NodeConfig) -> float:
    """Seconds a child stopped at a time limit gets between SIGINT and SIGKILL (a third of the margin)."""
    return min(10.0, max(1.0, cfg.margin / 3))


def runnable(run_keys: list[str], specs: dict, good_datasets: set[str]) -> tuple[list[str], dict[str, str]]:
    """The runs that may start, in order, and why each other one may not."""
    keys, refused = [], {}
    for key in run_keys:
        if key not in specs:
            refused[key] = "not started: not in the bundle (bundled runs: runs.json)"
        elif key.split("/")[0] not in good_datasets:
            refused[key] = "not started: its bundled data failed the sha256 check"
        elif specs[key].get("train") is None:
            refused[key] = "not started: not a trained run"
        else:
            keys.append(key)
    return keys, refused


def run_max_seconds(cfg: NodeConfig, left: float) -> float:
    """A run's max_seconds when it starts with ``left`` seconds of the budget left."""
    return max(1.0, (left - cfg.margin - cfg.run_reserve) * cfg.train_share)


def run_threads(cfg: NodeConfig, device: str, cpu_count: int | None, runs: int) -> int:
    """CPU threads of each run: node.threads, else 2 beside a GPU, else the cores shared by the runs at once."""
    return cfg.threads or (2 if device == "cuda" else max(1, (cpu_count or 1) // max(1, min(cfg.parallel, runs))))


def too_late(cfg: NodeConfig, left: float) -> bool:
    """No further run starts with less than node.min_run_seconds left (after the margin)."""
    return left - cfg.margin < cfg.min_run_seconds


def may_launch(cfg: NodeConfig, active: dict[str, RunProc], first: RunProc | None, launched: int,
               now: float) -> bool:
    """Whether another run may start now: below node.parallel, every run going has shown its memory, and
    the first run has had its time alone (its solo rate: the throughput baseline)."""
    if len(active) >= cfg.parallel:
        return False
    if any(not rp.warm for rp in active.values()):
        return False  # its memory is not known yet
    if first is not None and first.key in active and cfg.solo_seconds > 0:
        alone = len(first.rows) < SOLO_ROWS and now - first.started < cfg.solo_seconds
        if alone and launched == 1:
            return False
    return True


def memory_needed(cfg: NodeConfig, footprints: list[float]) -> float:
    """Free MiB another run needs: node.memory_headroom x the largest footprint a run has shown."""
    return max(footprints) * cfg.memory_headroom if footprints else 0.0


def is_warm(cfg: NodeConfig, rp: RunProc, now: float) -> bool:
    """A run has reached its first check or run node.warm_seconds: its memory footprint can be measured (a
    VLNHMM's evaluation caches, the dense transition matrix and the emission chunks, first exist at its first check:
    measured before it, a 2^15 run would look several GiB smaller than it gets)."""
    return bool(rp.rows) or now - rp.started >= cfg.warm_seconds


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
