"""Where each trained run of the config stands: finished, cut short, training now, interrupted, stopped part-way,
filed, or not started.

    ./repro status --profile profiles/cpu                  # the CPU profile's runs
    ./repro status --profile profiles/cpu --all            # every trained run of the config, started or not
    ./repro status --config recipe=released-code           # KEY=VALUE, as snakemake --config

Read from what the trainer leaves (nothing is loaded or locked, so it is safe beside running jobs): a run's
``metrics.json`` (finished), and its history beside the checkpoint (``build/checkpoints/<run>/train.log``,
every segment's log lines): the last validation check's step, epoch, valid ppl, lr and tokens/s, the best
valid ppl so far, and an estimate of the training time left at the last check's speed (checks not counted).
A run is *training now* if a ``pipeline.training.train`` process with its checkpoint is alive on this machine.
One never started here that has a committed reference run of the same settings (``results/reference/``, as
``./repro import`` filed it; the default config's tables show it) is *filed*, with that run's numbers and where
it was trained.  A run that ended *cut short* by its time cap (``max_seconds``, an execution setting) with its
checkpoint still here can go on from its last check; snakemake runs a job whose outputs are complete again only
when told to (``--forcerun``), and the command for that is printed below the table.  So can one *interrupted*: its
process ended between two checks (killed, or its session closed), its checkpoint kept, no error in its history.
A run *stopped* part-way either stopped on an error (shown) or has no checkpoint to go on from.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import DEFAULT_RECIPE, ConfigError, Run, lock_holder, resolve_runs, run_history
from pipeline.files import shown_path
from pipeline.references import REFERENCE, filed_reference, filing_roots

STOPPED = "stopped by an error: "  # pipeline.training.train's last history line of a run whose process stopped so

TIME_CAP = "config/time-cap.yaml"  # the overlay that caps every training process (docs/cpu.md)

CHECK = re.compile(r"step\s+([\d,]+) epoch\s+([\d.]+) \| train ppl\s+([\d.]+) \| valid ppl\s+([\d.]+) \| "
                   r"lr ([\d.e+-]+) \| ([\d,]+) tok/s")
PLAN = re.compile(r"([\d,]+) steps/epoch, validation every [\d,]+ steps, ([\d,]+) steps")


@dataclass
class Standing:
    key: str
    state: str  # finished | cut short | training now | interrupted | stopped | filed | not started
    step: int = 0
    total: int | None = None
    epoch: float | None = None
    valid: float | None = None
    best: float | None = None
    lr: float | None = None
    tokens_per_s: int | None = None
    hours_left: float | None = None
    detail: str = ""


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _ppl(value) -> str:
    """A perplexity of a record, or "none" where it has none (a run stopped before it was scored)."""
    return f"{value:.2f}" if isinstance(value, (int, float)) else "none"


def _started(proc: Path) -> float | None:
    """The process's start as a Unix time (Linux /proc), or None."""
    try:
        ticks = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _cap_end(proc: Path, words: list[str], cwd: Path) -> float | None:
    """When the trainer's ``max_seconds`` runs out (Unix time, from its --spec and its start), or None."""
    if "--spec" not in words[:-1]:
        return None
    spec = words[words.index("--spec") + 1]
    try:
        spec = json.loads(spec if spec.lstrip().startswith("{") else (cwd / spec).read_text())
        cap = (spec.get("train") or {}).get("max_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    started = _started(proc)
    return started + float(cap) if cap and started else None


def running_checkpoints() -> dict[str, float | None]:
    """The checkpoint paths (as given, resolved) of every ``pipeline.training.train`` process alive on this
    machine (Linux /proc), each with when its ``max_seconds`` runs out (Unix time; None: no cap): a run's
    checkpoint names its recipe, dataset and name."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            words = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if "pipeline.training.train" in words and "--checkpoint" in words[:-1]:
            found[str((cwd / words[words.index("--checkpoint") + 1]).resolve())] = _cap_end(proc, words, cwd)
    return found


def standing(run: Run, root: Path, running: dict[str, float | None], reference: Path = REFERENCE) -> Standing:
    """``running``: :func:`running_checkpoints`."""
    metrics = root / run.out_dir / "metrics.json"
    history = root / run_history(run.checkpoint)
    lines = history.read_text().splitlines() if history.exists() else []
    checks = [m for m in (CHECK.search(line) for line in lines) if m]
    plans = [m for m in (PLAN.search(line) for line in lines) if m]
    checkpoint = str((root / run.checkpoint).resolve())
    now = checkpoint in running
    stopped_on_error = bool(lines) and STOPPED in lines[-1]
    s = Standing(run.key, "training now" if now else "stopped" if checks or plans or stopped_on_error else "not started")
    if plans:
        s.total = _int(plans[-1].group(2))
    if checks:
        last = checks[-1]
        s.step, s.epoch, s.valid = _int(last.group(1)), float(last.group(2)), float(last.group(4))
        s.lr, s.tokens_per_s = float(last.group(5)), _int(last.group(6))
        s.best = min(float(m.group(4)) for m in checks)
        if s.total and s.tokens_per_s and run.train:
            tokens_left = (s.total - s.step) * run.train.batch_size * run.train.bptt
            s.hours_left = tokens_left / s.tokens_per_s / 3600
    cap_end = running.get(checkpoint)
    if cap_end:  # a time cap (max_seconds) ends it before its planned steps
        left = max(cap_end - time.time(), 0) / 3600
        s.hours_left = left if s.hours_left is None else min(s.hours_left, left)
        s.detail = (f"time cap (max_seconds): ends by about {datetime.fromtimestamp(cap_end, timezone.utc):%H:%M} UTC, "
                    "its final valid and test scoring included")
    if s.state == "stopped" and stopped_on_error:  # its last process stopped on an error
        s.detail = lines[-1].split(STOPPED, 1)[1][:160]
    elif s.state == "stopped" and (root / run.checkpoint).exists():
        s.state = "interrupted"
        pid, host = lock_holder(root / run.checkpoint) or ("", "")
        if host and host != socket.gethostname():  # a cluster job's node: its processes are not seen from here
            s.detail = (f"its last trainer ran on {host} (pid {pid}), whose processes status cannot see: if a job "
                        "there trains it now, let it; else it goes on from its last check")
        else:
            s.detail = ("no trainer of it runs on this machine, and its last one ended between checks (killed, or "
                        "its session closed): it goes on from its last check")
    m = json.loads(metrics.read_text()) if metrics.exists() and not now else None
    # a process's final record; an 'incomplete' one is a check's, left behind by a process that did not end
    if m is not None and not str(m.get("status", "")).startswith("incomplete"):
        resumable = str(m.get("status", "")).startswith("cut short: time") and (root / run.checkpoint).exists()
        s.state = "cut short" if resumable else "finished"
        s.detail = f"{m.get('status', '')}: valid {_ppl(m.get('valid_ppl'))}, test {_ppl(m.get('test_ppl'))}"
        s.hours_left = None
    elif s.state == "not started" and (m := filed_reference(run, reference)) is not None:
        s.state = "filed"
        date = str((m.get("provenance") or {}).get("date") or "")[:10]
        s.detail = (f"reference, {m.get('status', '')}: valid {_ppl(m.get('valid_ppl'))}, test {_ppl(m.get('test_ppl'))} "
                    f"({', '.join(x for x in (m.get('device_name'), date) if x)}; {shown_path(reference / run.filed_as)})")
    return s


def time_to_train(run: Run, root: Path, reference: Path = REFERENCE) -> str:
    """How long ``run`` will train here, from what is known on this machine: the hours left at its last check's
    speed where it goes on from a checkpoint, else its planned epochs at the speed of its filed reference run
    (trained from today's settings, on the machine named), else that nothing is known."""
    s = standing(run, root, {}, reference)
    cap = run.train.max_seconds
    if s.state in ("cut short", "interrupted") and s.total and s.tokens_per_s:
        hours = (s.total - s.step) * run.train.batch_size * run.train.bptt / s.tokens_per_s / 3600
        return (f"{run.key}: goes on from its checkpoint at epoch {s.epoch:g} of {run.train.epochs:g}: about "
                f"{hours:.1f} h left at its last check's speed ({s.tokens_per_s:,} tokens/s)" + _capped(hours, cap))
    filed = filed_reference(run, reference)
    per_epoch = (filed or {}).get("seconds_per_epoch")
    if per_epoch:
        threads = sorted({seg.get("threads") for seg in filed.get("segments") or [] if seg.get("threads")})
        at = f", {'/'.join(map(str, threads))} thread(s)" if threads else ""
        hours = per_epoch * run.train.epochs / 3600
        return (f"{run.key}: about {hours:.1f} h for its {run.train.epochs:g} epochs at the speed of its filed run "
                f"({filed.get('device_name')}{at}; {shown_path(reference / run.filed_as)})" + _capped(hours, cap))
    return f"{run.key}: no run of its settings has been timed here (docs/cpu.md gives estimates)" + _capped(None, cap)


def _capped(hours: float | None, cap: float | None) -> str:
    """What a time cap (``max_seconds``) does to a run expected to train ``hours`` (None: not known)."""
    if not cap or (hours is not None and hours <= cap / 3600):
        return ""
    return (f"; its time cap (max_seconds {cap:g}) stops this process after about {cap / 3600:.1f} h, at the last "
            "check that fits, its checkpoint kept to go on from")


def table(rows: list[Standing]) -> str:
    head = ["run", "state", "step", "epoch", "last valid", "best valid", "lr", "tok/s", "left (h)", ""]
    body = [[r.key, r.state, f"{r.step:,}/{r.total:,}" if r.total else (f"{r.step:,}" if r.step else ""),
             f"{r.epoch:.2f}" if r.epoch is not None else "", f"{r.valid:.2f}" if r.valid else "",
             f"{r.best:.2f}" if r.best else "", f"{r.lr:.2e}" if r.lr else "",
             f"{r.tokens_per_s:,}" if r.tokens_per_s else "", f"{r.hours_left:.1f}" if r.hours_left is not None else "",
             r.detail] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *body])


def continue_command(targets: list[str], profile: str | None, configfiles: list[str] | None,
                     config: list[str] | None, directory: str | None) -> str:
    """The command that trains cut-short runs on from their checkpoints: their targets with their training jobs
    forced (snakemake reruns a job whose outputs exist only so), with the options status was given.  The rule
    is forced, not the files: ``--forcerun`` takes a single file before a target in ``./repro run``
    (pipeline.snakemake_args), and a target's training job is the only ``train`` job of its DAG."""
    words = ["./repro", "run"]
    words += ["--profile", profile] if profile else []
    words += ["--directory", directory] if directory else []
    words += ["--configfile", *configfiles] if configfiles else []
    words += ["--config", *config] if config else []
    return " ".join([*words, *targets, "--forcerun", "train"])


def main(argv: list[str] | None = None) -> int:
    from pipeline.profiles import load_config, workdir_of

    ap = argparse.ArgumentParser(prog="./repro status", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="snakemake profile (e.g. profiles/cpu): its config and runs")
    ap.add_argument("--configfile", nargs="+", help="config overlays, as snakemake --configfile")
    ap.add_argument("--config", nargs="+", help="KEY=VALUE, as snakemake --config")
    ap.add_argument("--all", action="store_true", help="every trained run, also those not started")
    ap.add_argument("--directory", help="snakemake's working directory, as its --directory (default: the "
                    "profile's `directory:`, else the repository)")
    a = ap.parse_args(argv)
    try:
        config = load_config(a.profile, a.configfile, a.config)
        runs = [r for r in resolve_runs(config) if r.train is not None]
    except ConfigError as err:
        raise SystemExit(f"config: {err}") from None
    on_cpu = config.get("profile") == "cpu"
    if on_cpu:  # the CPU profile trains its cpu_runs only
        runs = [r for r in runs if r.train.device == "cpu"]
    running = running_checkpoints()
    root = workdir_of(a.profile, a.directory)
    if not root.is_dir():
        raise SystemExit(f"no directory {root}: the working directory of the runs (--directory, or the profile's "
                         "`directory:`) does not exist")
    reference = filing_roots(config, root)[0]
    rows = [standing(r, root, running, reference) for r in runs]
    shown = rows if a.all else [r for r in rows if r.state != "not started"]
    print(table(shown) if shown else "no run has started (--all lists every run)")
    cut = [f"{r.out_dir}/metrics.json" for r, st in zip(runs, rows) if st.state in ("cut short", "interrupted")]
    if cut:
        go_on = continue_command(cut, a.profile, a.configfile, a.config, a.directory)
        head = (f"cut short or interrupted, with a checkpoint to go on from: {len(cut)} run(s).  To train on from the "
                "last check, ")
        if a.configfile:
            print(f"{head}with the --configfile given here (its time cap, if it sets one):\n  {go_on}")
        else:
            capped = continue_command(cut, a.profile, [TIME_CAP], a.config, a.directory)
            print(f"{head}to the planned epochs:\n  {go_on}\nor under a time cap ({TIME_CAP}: each process stops in "
                  f"time to score its run; give status your own --configfile and this command keeps it):\n  {capped}")
    quiet = len(rows) - len(shown)
    if quiet:
        print(f"({quiet} more not started; --all lists them)")
    recipe = config.get("recipe") or DEFAULT_RECIPE
    others = [r for r in (config.get("recipes") or {}) if r != recipe]
    if others:
        print(f"(runs of recipe {recipe}; the others': --config recipe={' / '.join(others)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
