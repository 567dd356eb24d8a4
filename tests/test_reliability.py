"""Bad input and faults a new user meets: each case fails loudly, names what to do, and loses nothing.

One test per case of the reliability review (stale results, corrupt files, overlays, guards).
Kernel-library integrity and NaN propagation through the TVM scans are in tests/test_kernels.py.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hmm.config import HMMConfig
from pipeline.config import resolve_run
from pipeline.data.corpus import Corpus, Windows
from hmm.model import VLNHMM
from pipeline.training.models import build_model
from pipeline.training.errors import TrainingError
from pipeline.training.evaluate import evaluate
from pipeline.training.train import Trainer, train

from conftest import dataset_spec

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DEFAULTS = {"train": {"device": "cpu", "evals_per_epoch": 2, "patience": 1, "seed": 3},
            "ff": {"hidden": 8, "batch_size": 8, "bptt": 16, "epochs": 1}}


def snakemake(*args, cwd=ROOT):
    return subprocess.run(SNAKEMAKE + list(args), cwd=cwd, capture_output=True, text=True)


# 1. specs: parsing writes nothing; results record the spec they were trained from
def test_dry_run_writes_no_file(tmp_path):
    proc = snakemake("-n", "--profile", "profiles/tiny", "--directory", str(tmp_path), "all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and ".snakemake" not in p.parts]
    assert written == []


def test_metrics_record_their_spec(small_ptb, tmp_path):
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS)
    corpus = Corpus.load(small_ptb)
    metrics = train(run, corpus, build_model(run, corpus), tmp_path / "out", tmp_path / "ckpt.pt")
    assert metrics["spec"] == run.result_spec()
    assert json.loads((tmp_path / "out/metrics.json").read_text())["spec"]["settings"]["hidden"] == 8


def test_table_refuses_a_result_of_other_settings():
    from pipeline.reporting.frames import build_table
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    current = resolve_run({"name": "ff", "dataset": "ptb", "model": "ff", "rows": ["table1/ff"]},
                          DEFAULTS | {"ff": {"hidden": 32}})
    trained = resolve_run({"name": "ff", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 64}})
    metrics = {"valid_ppl": 150.0, "test_ppl": 140.0, "params": 10, "status": "measured",
               "spec": trained.result_spec()}
    df = build_table("table1", paper, [{"spec": current.to_dict(), "metrics": metrics}])
    row = df[df.run == "ptb/ff"].iloc[0]
    assert row.status.startswith("stale: trained with hidden=64, the config says hidden=32")
    assert math.isnan(row.valid_ppl) and math.isnan(row.test_ppl)


# 4. transition dropout masks every transition of a window, the carried one included
def test_transition_dropout_masks_the_carry_rows():
    cfg = HMMConfig(num_states=12, constraint="uniform", states_per_word=4, state_dropout=0.0,
                    transition_dropout=0.5, hidden=8)
    model = VLNHMM(cfg, vocab_size=9, clusters=None, eos_id=8, seed=0).train()
    p = model.build(training=True)
    ids = torch.arange(12)
    assert torch.equal(p.transition.rows(ids), p.transition.dense()[ids])


# 5. a --configfile overlay on the tiny profile keeps the profile's config under it
def test_overlay_composes_with_the_tiny_profile(tmp_path):
    overlay = tmp_path / "my.yaml"
    overlay.write_text("brown: {alpha: 2.0e-4}\n")
    proc = snakemake("-n", "--profile", "profiles/tiny", "--configfile", str(overlay),
                     "--directory", str(tmp_path / "w"), "all")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "vlnhmm-32768" not in out and "vlnhmm-512" in out  # the tiny runs, not the paper's


# 6. validation that overflows or is NaN stops the run, naming the step
class _Scored(torch.nn.Module):
    """Trains like a unigram model; at evaluation every token gets log p = ``eval_logp``."""

    def __init__(self, vocab_size, eval_logp):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(vocab_size))
        self.eval_logp = eval_logp

    def initial_state(self, batch_size):
        return None

    def forward(self, x, mask, carry):
        if self.training:
            logp = self.logits.log_softmax(-1)[x].masked_fill(~mask, 0.0).sum(1)
        else:
            logp = torch.full((len(x),), self.eval_logp) * mask.sum(1)
        return logp, carry


@pytest.mark.parametrize("eval_logp, what", [(-1e4, "overflows"), (float("nan"), "not finite")])
def test_validation_overflow_or_nan_stops_with_the_step(small_ptb, tmp_path, eval_logp, what):
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS)
    corpus = Corpus.load(small_ptb)
    with pytest.raises(TrainingError, match=rf"validation perplexity {what} at step \d+ \(epoch 1.*no checkpoint of "
                       "this run was written yet"):
        train(run, corpus, _Scored(len(corpus.vocab), eval_logp), tmp_path / "out", tmp_path / "ckpt.pt")
    assert not (tmp_path / "ckpt.pt").exists() and not (tmp_path / "best.pt").exists()


def test_a_run_stopped_after_a_check_names_the_checkpoint_it_keeps(small_ptb, tmp_path):
    """NaN after the first check: the error names the checkpoint on disk and its step."""
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS)
    corpus = Corpus.load(small_ptb)
    model = build_model(run, corpus)
    trainer = Trainer(run, corpus, model, tmp_path / "out", tmp_path / "ckpt.pt")
    first_check = trainer.check_every

    def poisoned_step(x, mask, ntok, step=trainer.step):
        if trainer.state["step"] == first_check:
            with torch.no_grad():
                model.emb.weight.fill_(float("nan"))
        return step(x, mask, ntok)
    trainer.step = poisoned_step
    with pytest.raises(TrainingError, match=rf"non-finite loss at step {first_check + 1} .*the last checkpoint "
                       rf"\({tmp_path / 'ckpt.pt'}, step {first_check:,}\) is kept"):
        trainer.fit()


# 7. a full disk while writing a checkpoint: a plain message with the path
def test_disk_full_checkpoint_names_the_path(small_ptb, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS)
    corpus = Corpus.load(small_ptb)
    ckpt = tmp_path / "ckpt.pt"
    (tmp_path / "ckpt.tmp").symlink_to("/dev/full")  # every write to it fails with ENOSPC
    with pytest.raises(TrainingError, match=rf"no space left on device while writing {ckpt}"):
        train(run, corpus, build_model(run, corpus), tmp_path / "out", ckpt)


# 8. gpu_runs: always without a GPU fails before any job runs
def test_gpu_always_without_gpu_fails_before_any_job(tmp_path):
    if shutil.which("nvidia-smi") or torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = snakemake("--cores", "1", "--directory", str(tmp_path), "--config", "gpu_runs=always",
                     "--", "results/runs/ptb/ff/metrics.json")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "gpu_runs: always" in out and "no GPU" in out and "profiles/tiny" in out
    assert not (tmp_path / "data").exists()


# 10. a raw file corrupted after download: removed, and the message says so
def test_corrupt_raw_file_is_removed_by_verify(tiny_raw, tmp_path):
    from pipeline.data.fetch import main as fetch_main
    spec = dataset_spec("ptb", tiny=True)
    out = tmp_path / "raw"
    shutil.copytree(tiny_raw, out)
    target = out / spec["splits"]["valid"]["file"]
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as err:
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        fetch_main(["--verify", "--spec", str(tmp_path / "spec.json"), "--out", str(out)])
    assert "removed" in str(err.value) and "rerun" in str(err.value)
    assert not target.exists()


# 11. a split with fewer tokens than streams x (streams - 1) is scored
# 11. no network: the download's failure ends with what to do, and no command fills the screen
def test_download_without_network_ends_with_what_to_do(tmp_path):
    urls = {split: f"http://127.0.0.1:9/ptb.{split}.txt" for split in ("train", "valid", "test")}  # refused at once
    overlay = tmp_path / "offline.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"ptb": {"sources": [{"kind": "files", "urls": urls}]}}}))
    proc = subprocess.run(SNAKEMAKE + ["--cores", "1", "--directory", str(tmp_path / "work"), "--configfile",
                                       str(overlay), "--", "data/ptb/stats.json"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode != 0
    last = "\n".join(lines[-10:])
    assert "Downloading ptb failed: no source could be reached (no network?); each source's error: " \
           "logs/download/ptb.log." in last, proc.stdout
    assert "add --config mirror=DIR: `./repro run --config mirror=DIR`." in last
    assert "The tiny profile needs no download (its data are in the repository): " \
           "`./repro run --profile profiles/tiny all`." in last
    commands = [line for line in lines if "pipeline.data.fetch" in line]  # no spec inline in a command
    assert commands and max(map(len, commands)) < 200 and "sha256" not in proc.stdout


def test_evaluate_short_split():
    cfg = HMMConfig(num_states=8, num_clusters=2, hidden=8, state_dropout=0.0)
    model = VLNHMM(cfg, vocab_size=6, clusters=torch.tensor([0, 0, 0, 1, 1, 1]).numpy(), eos_id=5)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 5])
    w = Windows(ids, batch_size=4, bptt=2)
    assert w.mask.sum(1).min() >= 1 and int(w.mask.sum()) == 9
    ppl, _ = evaluate(model, ids, 4, 2, torch.device("cpu"))
    whole, _ = evaluate(model, ids, 4, 9, torch.device("cpu"))  # one window: the carry across windows is exact
    assert math.isfinite(ppl) and ppl == pytest.approx(whole, rel=1e-5)


# 12. a stale snakemake lock (snakemake killed with -9): ./repro run says what happened and goes on
def test_repro_clears_a_stale_lock(tmp_path):
    work = tmp_path / "w"
    locks = work / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text(str(work / "data"))
    proc = subprocess.run([str(ROOT / "repro"), "run", "-n", "--directory", str(work), "--profile",
                           "profiles/tiny", "all"], cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert "stale snakemake lock" in out and "killed" in out
    assert proc.returncode == 0, out[-2000:]
    assert not list(locks.glob("*.lock"))


# 12b. a live lock (another snakemake works in the directory, its DAG sharing files with this one's): ./repro run
# says it is live, names the other run and does not remove it, where snakemake's own message offers --unlock
def test_repro_names_the_snakemake_holding_a_live_lock_and_keeps_it(tmp_path):
    work = tmp_path / "w"
    locks = work / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("data/ptb/stats.json\n")
    holder = subprocess.Popen(["bash", "-c", "exec -a snakemake-holder sleep 300"], cwd=work)
    try:
        proc = subprocess.run([str(ROOT / "repro"), "run", "--directory", str(work), "--profile", "profiles/tiny",
                               "data/ptb/stats.json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0 and "Directory cannot be locked" in proc.stderr, proc.stderr[-2000:]
    assert "that lock is live, not stale: do not --unlock" in proc.stderr
    assert f"pid {holder.pid}" in proc.stderr and "snakemake-holder" in proc.stderr and "--nolock" in proc.stderr
    assert "stale snakemake lock" not in proc.stderr and (locks / "0.output.lock").exists()
    assert not (work / "data/ptb/stats.json").exists()  # nothing ran


def test_children_are_stopped_together_in_one_grace_period(tmp_path):
    """At the node's deadline every run gets SIGINT at once and SIGKILL one grace period later, so stopping
    three runs that ignore SIGINT leaves them all signalled before the first grace period ends."""
    from pipeline.node.children import Children

    kids = Children(tmp_path, "test", tmp_path)
    code = ("import signal, sys, time\n"
            "def got(*_):\n    open(sys.argv[1], 'w').write(repr(time.monotonic()))\n"
            "signal.signal(signal.SIGINT, got)\nopen(sys.argv[1] + '.up', 'w').close()\n"
            "while True: time.sleep(0.05)\n")
    procs = []
    for i in range(3):
        proc, log = kids.spawn(["-c", code, str(tmp_path / f"int{i}")], tmp_path / f"kid{i}.log")
        log.close()
        procs.append(proc)
    for i in range(3):
        for _ in range(200):
            if (tmp_path / f"int{i}.up").exists():
                break
            time.sleep(0.05)
    grace = 2.0
    kids.stop_together(procs, grace)
    assert all(p.returncode == -9 for p in procs)  # they ignored SIGINT: killed
    got = [float((tmp_path / f"int{i}").read_text()) for i in range(3)]
    assert max(got) - min(got) < grace, got  # one after another would be a grace period apart
    assert kids.procs == {}
