"""The node's scheduling decisions (pipeline.node.schedule), without starting a process: phase limits,
which runs may start and when, their time, threads and memory."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.node import schedule
from pipeline.node.schedule import RunProc
from pipeline.node.settings import NodeConfig

CFG = NodeConfig(budget=540, margin=25, parallel=2, solo_seconds=45, warm_seconds=20, memory_headroom=1.3,
                 run_reserve=30, train_share=0.9, min_run_seconds=60)


def run(key="ptb/ff", started=0.0, rows=0, warm=True) -> RunProc:
    return RunProc(key, proc=None, log=None, out=Path("."), started=started, max_seconds=100.0, free_before=None,
                   rows=[{}] * rows, warm=warm)


def test_phase_limit_keeps_the_margin_and_the_environment_record():
    assert schedule.phase_limit("check", cap=150, left=400, margin=25) == 150
    assert schedule.phase_limit("check", cap=150, left=100, margin=25) == 75
    assert schedule.phase_limit("check", cap=150, left=20, margin=25) == -5   # below MIN_PHASE_S: skipped
    assert schedule.phase_limit("env", cap=30, left=20, margin=25) == 15     # the env record comes back anyway
    assert schedule.phase_limit("env", cap=10, left=20, margin=25) == 10


def test_runnable_keeps_order_and_says_why_not():
    specs = {"ptb/ff": {"train": {}}, "wt2/ff": {"train": {}}, "ptb/kn5": {"train": None}, "ptb/lstm": {"train": {}}}
    keys, refused = schedule.runnable(["ptb/lstm", "ptb/x", "wt2/ff", "ptb/kn5", "ptb/ff"], specs, {"ptb"})
    assert keys == ["ptb/lstm", "ptb/ff"]
    assert refused == {"ptb/x": "not started: not in the bundle (bundled runs: runs.json)",
                       "wt2/ff": "not started: its bundled data failed the sha256 check",
                       "ptb/kn5": "not started: not a trained run"}


def test_first_run_runs_alone_until_its_third_check_or_solo_seconds():
    first = run(started=0.0, rows=1)
    active = {first.key: first}
    assert not schedule.may_launch(CFG, active, first, launched=1, now=10.0)
    assert schedule.may_launch(CFG, active, first, launched=1, now=46.0)          # solo_seconds over
    first.rows = [{}] * schedule.SOLO_ROWS
    assert schedule.may_launch(CFG, active, first, launched=1, now=10.0)          # its solo rate is measured
    assert schedule.may_launch(dataclasses.replace(CFG, solo_seconds=0), {first.key: run(rows=0)},
                               first, launched=1, now=1.0)


def test_no_launch_beyond_parallel_or_before_memory_is_known():
    a, b = run("ptb/a"), run("ptb/b")
    assert not schedule.may_launch(CFG, {"ptb/a": a, "ptb/b": b}, a, launched=2, now=100.0)   # parallel 2
    cold = run("ptb/c", warm=False)
    assert not schedule.may_launch(CFG, {"ptb/c": cold}, a, launched=2, now=100.0)
    assert schedule.may_launch(CFG, {}, None, launched=0, now=0.0)


def test_warm_at_first_check_or_after_warm_seconds():
    assert not schedule.is_warm(CFG, run(started=0.0, rows=0), now=19.0)
    assert schedule.is_warm(CFG, run(started=0.0, rows=0), now=20.0)
    assert schedule.is_warm(CFG, run(started=0.0, rows=1), now=1.0)


def test_memory_time_and_threads_of_a_run():
    assert schedule.memory_needed(CFG, []) == 0.0
    assert schedule.memory_needed(CFG, [1000.0, 4000.0]) == pytest.approx(5200.0)
    assert schedule.run_max_seconds(CFG, left=455.0) == pytest.approx(0.9 * 400)
    assert schedule.run_max_seconds(CFG, left=10.0) == 1.0
    assert schedule.too_late(CFG, left=84.0) and not schedule.too_late(CFG, left=85.0)
    assert schedule.run_threads(CFG, "cuda", 16, 4) == 2
    assert schedule.run_threads(CFG, "cpu", 16, 4) == 8          # cores / min(parallel, runs)
    assert schedule.run_threads(CFG, "cpu", 16, 1) == 16
    assert schedule.run_threads(NodeConfig(threads=3), "cpu", 16, 4) == 3
    assert schedule.stop_grace(CFG) == pytest.approx(25 / 3) and schedule.stop_grace(NodeConfig(margin=0)) == 1.0


def test_summary_and_archive_agree_on_a_run_going_on(tmp_path):
    """OUT packed while a run trains (a kill -9 of the node keeps that OUT): summary.json gives the run the status
    its metrics.json in runs.tgz has (incomplete after a check), not 'running'."""
    import io
    import json
    import tarfile
    from types import SimpleNamespace

    from pipeline.node.job import Node
    from pipeline.node.runs import Runs

    work, out = tmp_path / "work", tmp_path / "out"
    (work / "runs/ptb/ff").mkdir(parents=True)
    (work / "logs").mkdir()
    (work / "logs/node.log").write_text("")
    out.mkdir()
    status = "incomplete: last check at step 10 of 40 (0.25 of 1 epochs); no test score yet"
    (work / "runs/ptb/ff/metrics.json").write_text(json.dumps({"status": status}))
    node = SimpleNamespace(summary={"runs": {"ptb/ff": {"status": "running"}}}, work=work, out=out, device="cpu",
                           elapsed=lambda: 1.0)
    node.runs = Runs(node)
    node.runs.active["ptb/ff"] = dataclasses.replace(run(rows=1), out=work / "runs/ptb/ff")
    Node.pack(node)
    summary = json.loads((out / "summary.json").read_text())
    with tarfile.open(out / "runs.tgz") as tar:
        archived = json.load(io.BytesIO(tar.extractfile("runs/ptb/ff/metrics.json").read()))
    assert summary["runs"]["ptb/ff"]["status"] == archived["status"] == status
