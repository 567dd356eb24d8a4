"""The node job's settings (config ``node:``), shared by the bundle that records them and the job that reads them."""
from __future__ import annotations

from dataclasses import dataclass

from hmm.config import Settings, from_dict, setting

BUNDLE_FORMAT = 1
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
    warm_seconds: float = setting(60.0, "after starting a run wait for its first check (its evaluation caches: "
                                        "at 2^15 states some GiB beyond its training step), or this long, before "
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
