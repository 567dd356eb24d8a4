"""profiles/slurm on a real single-node SLURM 22.05 (tests/slurm/start.sh: Debian packages, 127.0.0.1 only).

A slice of the tiny DAG goes through SLURM as docs/slurm.md says to run the tiny profile there: data, Brown
clusters and KN5 on the cpu partition, a training run asking a GPU on the gpu partition's declared GPU; a
request larger than every node is refused before anything is submitted; a running training job is
cancelled with scancel (snakemake must fail it, not wait for ever), a SIGTERM to snakemake cancels its job,
and a rerun resumes from the checkpoint.  What every job asked for and used (sacct) is printed.

The SLURM tests run where CI=true (or REPRO_SLURM_TEST=1), as root with apt-get; skipped elsewhere, with
the reason.  The dry runs (GPU runs in the DAG under the cluster executor whatever --config says) run anywhere.
"""
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import merged_config
from pipeline.config import resolve_runs

ROOT = Path(__file__).resolve().parent.parent
SITE = "tests/slurm/site.yaml"  # the test SLURM's account, as a site would set it


def reason_to_skip():
    if os.environ.get("CI") != "true" and os.environ.get("REPRO_SLURM_TEST") != "1":
        return "starts a real SLURM from Debian packages as root: runs where CI=true or REPRO_SLURM_TEST=1"
    if os.geteuid() != 0:
        return "needs root (installs and starts slurmctld, slurmd, slurmdbd, MariaDB, munged)"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "needs apt-get (Debian packages slurmctld slurmd slurm-client munge slurmdbd mariadb-server)"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.is_symlink():
        return "this machine has its own SLURM (/etc/slurm/slurm.conf): not starting another"
    return None


pytestmark = pytest.mark.pipeline


def dry_run(work, *args):
    cmd = [sys.executable, "-m", "snakemake", "-n", "--directory", str(work), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    table = proc.stdout.split("Job stats:")[-1].split("total")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    return counts, proc.stderr


def test_gpu_runs_stay_in_the_dag_under_slurm_whatever_config_says(tmp_path):
    plain, _ = dry_run(tmp_path, "--profile", "profiles/slurm", "all")
    mirror, _ = dry_run(tmp_path, "--profile", "profiles/slurm", "all", "--config", "mirror=/srv/data")
    # `all` trains every run of a paper row (a diagnostic run of no row has its own target only)
    trained = [r for r in resolve_runs(merged_config("config/config.yaml")) if r.train is not None and r.rows]
    assert plain == mirror and plain["train"] == len(trained) == 29, (plain, mirror)  # 27 runs + 2 seed repeats


def test_runs_left_out_of_the_dag_are_listed(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    counts, err = dry_run(tmp_path, "results/table1.csv")
    assert "train" not in counts
    trained = [r for r in resolve_runs(merged_config("config/config.yaml")) if r.train is not None]
    assert f"WARNING: {len(trained)} GPU run(s) left out of the DAG" in err and "ptb/vlnhmm-32768" in err, err[-2000:]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running SLURM for this module, stopped (by its pid files) afterwards whatever happened."""
    if reason_to_skip():
        pytest.skip(reason_to_skip())
    state = tmp_path_factory.mktemp("slurm")
    start = time.monotonic()
    proc = subprocess.run([ROOT / "tests/slurm/start.sh", state], capture_output=True, text=True)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr + logs(state)
        yield f"{proc.stdout}[slurm] started in {time.monotonic() - start:.0f} s"
    finally:
        subprocess.run([ROOT / "tests/slurm/stop.sh", state])


def logs(state):
    return "".join(f"\n--- {f}\n{f.read_text()[-2000:]}" for f in sorted((state / "log").glob("*.log")))


def command(work, *args):
    """docs/slurm.md's command for the tiny profile on SLURM, with the test's workdir, site file and quick checks."""
    return ["./repro", "run", "--profile", "profiles/slurm", "--directory", str(work), "--configfile", SITE,
            "--jobs", "4", "--slurm-init-seconds-before-status-checks", "2", *args, "--config", "profile=tiny"]


def say(capsys, text):
    """A line of the test's transcript (shown by pytest without -s too)."""
    with capsys.disabled():
        print(text)


def run(capsys, work, *args):
    start = time.monotonic()
    proc = subprocess.run(command(work, *args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    say(capsys, f"[snakemake {' '.join(args)}] exit {proc.returncode} after {time.monotonic() - start:.0f} s")
    return proc


def jobs():
    """Every job SLURM knows: id -> rule and wildcards (the plugin's comment), partition, state, request,
    allocation, elapsed time and memory: the peak resident sizes of its steps (snakemake in the batch step,
    the rule's command in the srun step) summed, an upper bound of what it held at once."""
    out = subprocess.run(["sacct", "--parsable2", "--noheader", "--allusers", "--format",
                          "JobID,Comment,Partition,State,ReqTRES,AllocTRES,Elapsed,MaxRSS"],
                         capture_output=True, text=True, check=True).stdout
    table = {}
    for row in csv.reader(out.splitlines(), delimiter="|"):
        job, step = row[0].partition(".")[::2]
        if not step:
            table[job] = dict(zip(("comment", "partition", "state", "req", "alloc", "elapsed"), row[1:7]),
                              rss_kb=0)
        elif job in table and row[7]:
            table[job]["rss_kb"] += kilobytes(row[7])
    return table


def kilobytes(rss):
    units = {"K": 1, "M": 1024, "G": 1024 ** 2}
    return round(float(rss[:-1]) * units[rss[-1]] if rss[-1] in units else float(rss) / 1024)


def show_jobs(capsys, title):
    lines = [f"[sacct] {title}", f"{'job':>4} {'rule, wildcards':<30} {'partition':<9} {'state':<14} "
             f"{'requested':<44} {'elapsed':>8} {'RSS MB':>6}"]
    for job, j in jobs().items():
        rule = j["comment"].removeprefix("rule_").replace("_wildcards_", " ")
        lines.append(f"{job:>4} {rule:<30} {j['partition']:<9} {j['state']:<14} {j['req']:<44} "
                     f"{j['elapsed']:>8} {j['rss_kb'] / 1024:>6.0f}")
    say(capsys, "\n".join(lines))


def by_comment(prefix):
    return {job: j for job, j in jobs().items() if j["comment"].startswith(prefix)}


def wait_until(what, test, seconds):
    for _ in range(seconds * 2):
        if test():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds} s")


def running(prefix):
    """Ids of the running jobs whose comment (rule_<rule>_wildcards_...) starts with ``prefix``."""
    out = subprocess.run(["squeue", "--noheader", "--format", "%i|%T|%k"], capture_output=True, text=True).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return [job for job, state, comment in rows if state == "RUNNING" and comment.startswith(prefix)]


def test_slice_runs_cpu_jobs_on_cpu_and_a_gpu_job_on_the_gpu(slurm, tmp_path, capsys):
    say(capsys, f"\n{slurm}")
    too_big = run(capsys, tmp_path, "data/ptb/stats.json", "--set-resources", "download_ptb:mem_mb=999999")
    assert too_big.returncode != 0 and "ask more than any node of their partition" in too_big.stderr, \
        too_big.stderr[-3000:]
    assert not jobs(), "the refused run submitted jobs"

    proc = run(capsys, tmp_path, "results/runs/ptb/kn5/metrics.json", "data/ptb/clusters/brown-16.tsv",
               "results/runs/ptb/ff/metrics.json", "--set-resources", "train:gpu=1", "train:slurm_partition=gpu")
    show_jobs(capsys, "the slice (train ptb/ff asked a GPU)")
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = jobs()
    rules = {j["comment"].split("_wildcards_")[0].removeprefix("rule_"): j for j in done.values()}
    assert set(rules) == {"download_ptb", "prepare", "kn5", "brown_clusters", "train"}, rules
    assert all(j["state"] == "COMPLETED" for j in done.values())
    assert rules["train"]["partition"] == "gpu" and "gres/gpu=1" in rules["train"]["alloc"]
    assert all(j["partition"] == "cpu" for rule, j in rules.items() if rule != "train")
    assert "mem=4000M" in rules["kn5"]["req"] and "cpu=1," in rules["prepare"]["req"]
    assert "cpu=2," in rules["train"]["req"] and "mem=2000M" in rules["train"]["req"]  # site.yaml: 2 cpus
    assert (tmp_path / "results/runs/ptb/ff/metrics.json").is_file()


def test_scancel_fails_the_job_sigterm_cancels_it_and_a_rerun_resumes(slurm, tmp_path, capsys):
    target = "results/runs/wt2/ff/metrics.json"
    ckpt = tmp_path / "build/checkpoints/wt2/ff/ckpt.pt"
    log = tmp_path / "logs/runs/wt2/ff.log"

    # scancel of the running training job, once it has a checkpoint: snakemake fails it and stops
    snake = subprocess.Popen(command(tmp_path, target), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_until("the training job running with a checkpoint", lambda: running("rule_train") and ckpt.exists(), 300)
    job = running("rule_train")[0]
    subprocess.run(["scancel", job], check=True)
    cancelled = time.monotonic()
    out = snake.communicate(timeout=180)[0]
    seen = time.monotonic() - cancelled
    say(capsys, f"\n[scancel] job {job} cancelled; snakemake exited {snake.returncode} {seen:.0f} s later")
    assert snake.returncode != 0 and seen < 120 and "CANCELLED" in out, out[-3000:]
    say(capsys, "\n".join(line for line in out.splitlines() if "CANCELLED" in line))

    # SIGTERM to snakemake while the rerun's job runs: snakemake cancels the job and exits
    snake = subprocess.Popen(command(tmp_path, target), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_until("the rerun's training job running", lambda: running("rule_train"), 120)
    job = running("rule_train")[0]
    time.sleep(3)
    snake.send_signal(signal.SIGTERM)
    out = snake.communicate(timeout=120)[0]
    wait_until("the job cancelled after SIGTERM", lambda: jobs()[job]["state"].startswith("CANCELLED"), 60)
    say(capsys, f"[SIGTERM] snakemake exited {snake.returncode}; its job {job}: {jobs()[job]['state']}")
    say(capsys, "\n".join(line for line in out.splitlines() if "Terminating" in line or "Cancel" in line))

    # the rerun resumes from the checkpoint and finishes
    proc = run(capsys, tmp_path, target)
    show_jobs(capsys, "scancel, SIGTERM, resume (train wt2/ff)")
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = log.read_text()
    resumed = re.findall(r"resumed from \S+ at step [\d,]+/[\d,]+", text)
    say(capsys, f"[resume] {resumed}")
    assert resumed and (tmp_path / target).is_file()
    # snakemake starts the job's log afresh; the history beside the checkpoint keeps every segment's lines
    history = ckpt.with_name("train.log").read_text()
    assert " parameters on " in history.split("resumed from")[0] and history.count("resumed from") >= 1, history[:3000]
