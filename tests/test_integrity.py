"""No corrupt artifact ever becomes a number: every file that feeds a reported number carries its
SHA-256 record, and every reader checks it first (the integrity review, one test per case).

Kernel libraries have been checked this way since the first reliability review (tests/test_kernels.py).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.clusters import load_clusters
from pipeline.config import resolve_run
from pipeline.data.corpus import Corpus, prepare
from pipeline.data.fetch import DataError
from pipeline.integrity import IntegrityError, record, sha256
from pipeline.training.models import build_model
from pipeline.training.errors import TrainingError
from pipeline.training.train import train

from conftest import raw_paths

DEFAULTS = {"train": {"device": "cpu", "evals_per_epoch": 2, "patience": 1, "seed": 5},
            "ff": {"hidden": 8, "batch_size": 8, "bptt": 16, "epochs": 1}}


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def ff_run():
    return resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS)


def model_of(run, corpus):
    torch.manual_seed(run.train.seed)  # as pipeline.training.train's main: the same initial weights each time
    return build_model(run, corpus)


@pytest.fixture
def trained(small_ptb, tmp_path):
    """A finished FF run: its metrics and checkpoint directory."""
    run, corpus = ff_run(), Corpus.load(small_ptb)
    metrics = train(run, corpus, model_of(run, corpus), tmp_path / "a", tmp_path / "ckpt" / "ckpt.pt")
    return run, corpus, metrics, tmp_path / "ckpt"


def weight_offset(path: Path) -> int:
    """A byte inside the stored tensors of a checkpoint (its zip's data records), not in its headers."""
    data = path.read_bytes()
    return data.index(b"/data/0") + 400


# 1 + 4. a checkpoint (or its best weights) flipped or truncated: set aside, the run starts over
@pytest.mark.parametrize("damage", ["flipped bit in ckpt.pt", "flipped bit in best.pt", "truncated ckpt.pt"])
def test_corrupt_checkpoint_is_set_aside_and_the_run_starts_over(trained, tmp_path, capsys, damage):
    run, corpus, first, ckpt_dir = trained
    target = ckpt_dir / damage.split()[-1]
    if damage.startswith("truncated"):
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        flip_bit(target, weight_offset(target))
    capsys.readouterr()
    again = train(run, corpus, model_of(run, corpus), tmp_path / "b", ckpt_dir / "ckpt.pt")
    out = capsys.readouterr().out
    assert "is corrupt and is not used" in out and "starting over from scratch" in out, out
    assert (ckpt_dir / f"{target.name}.corrupt").exists()
    assert "resumed" not in out
    assert again["valid_ppl"] == first["valid_ppl"] and again["test_ppl"] == first["test_ppl"]
    assert again["inputs"]["resumed_from"] == []


def test_metrics_name_their_inputs(trained, small_ptb):
    run, corpus, metrics, ckpt_dir = trained
    assert metrics["inputs"]["data"]["test.npy"] == sha256(small_ptb / "test.npy")
    assert set(metrics["inputs"]["data"]) >= {"vocab.tsv", "train.npy", "valid.npy", "test.npy"}
    again = train(run, corpus, model_of(run, corpus), ckpt_dir.parent / "b", ckpt_dir / "ckpt.pt")
    assert again["inputs"]["resumed_from"][0]["sha256"] == sha256(ckpt_dir / "ckpt.pt")


# 5. a full disk while a checkpoint is written: our message, no partial file, the old checkpoint kept
def test_disk_full_while_writing_a_checkpoint(small_ptb, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run, corpus = ff_run(), Corpus.load(small_ptb)
        ckpt = disk / "ckpt.pt"
        with pytest.raises(TrainingError, match=rf"no space left on device while writing {disk}/(best|ckpt).pt"):
            train(run, corpus, model_of(run, corpus), tmp_path / "out", ckpt)
        assert not list(disk.glob("*.tmp"))  # the partial file is gone
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# 3. one token id changed in a prepared split
def test_changed_token_in_prepared_data_is_refused(small_ptb, tmp_path):
    import shutil
    data = tmp_path / "ptb"
    shutil.copytree(small_ptb, data)
    ids = np.load(data / "test.npy")
    ids[10] = (ids[10] + 1) % ids.max()
    np.save(data / "test.npy", ids)
    with pytest.raises(IntegrityError, match=r"test.npy does not match its recorded SHA-256 .* expected \w+, "
                                             rf"actual \w+; delete {data} and run the same command again \(with the same profile"):
        Corpus.load(data)


def test_edited_cluster_file_is_refused(small_ptb, tmp_path):
    vocab = Corpus.load(small_ptb).vocab
    path = tmp_path / "brown-4.tsv"
    path.write_text("word\tcluster\tbits\tcount\n" + "".join(f"{w}\t{i % 4}\t0\t1\n" for i, w in enumerate(vocab.tokens)))
    record(path)
    load_clusters(path, vocab)
    path.write_text(path.read_text().replace("\t1\t0\t1\n", "\t2\t0\t1\n", 1))
    with pytest.raises(IntegrityError, match=r"brown-4.tsv does not match its recorded SHA-256"):
        load_clusters(path, vocab)


# 8. an empty split is refused where it is prepared, naming the split and the dataset
def test_empty_split_is_refused_by_prepare(tiny_raw, tmp_path):
    paths = raw_paths(tiny_raw, "ptb")
    empty = tmp_path / "ptb.valid.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=r"the valid split of ptb \(.*ptb.valid.txt\) has no tokens"):
        prepare(paths | {"valid": empty}, tmp_path / "ptb", "lines", {})


def test_prepare_records_every_file(small_ptb):
    sums = (small_ptb / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 8 and all(sha256(small_ptb / line.split()[1]) == line.split()[0] for line in sums)


# 7. the job's shell killed (snakemake gave the job up): the trainer goes too and writes no result
def test_trainer_dies_with_its_job_and_writes_nothing_after(small_ptb, tmp_path):
    import os
    import signal
    import sys
    import time
    run = resolve_run({"name": "long", "dataset": "ptb", "model": "ff"},
                      DEFAULTS | {"ff": {"hidden": 8, "batch_size": 8, "bptt": 16, "epochs": 500}})
    out, ckpt = tmp_path / "out", tmp_path / "ckpt" / "ckpt.pt"
    cmd = (f"{sys.executable} -m pipeline.training.train --spec {json.dumps(json.dumps(run.to_dict()))} --data {small_ptb} "
           f"--out {out} --checkpoint {ckpt} 2>&1 | tee {tmp_path / 'log'}")
    job = subprocess.Popen(["bash", "-c", cmd], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "metrics.json").exists():
        time.sleep(0.2)
    assert (out / "metrics.json").exists(), (tmp_path / "log").read_text()
    os.kill(job.pid, signal.SIGTERM)  # what a job manager does to the job's shell
    job.wait()
    (out / "metrics.json").unlink()   # snakemake removes the failed job's outputs
    time.sleep(3)
    alive = subprocess.run(["pgrep", "-f", f"pipeline.training.train .*{ckpt}"], capture_output=True, text=True).stdout.split()
    assert alive == [], "the trainer outlived its job"
    assert not (out / "metrics.json").exists()


# 10. a GPU run asked for by name on a machine without a GPU: stopped before its upstream jobs
@pytest.mark.parametrize("profile", ["profiles/gpu", "profiles/tiny"])
def test_gpu_run_without_gpu_stops_before_any_job(tmp_path, profile):
    import shutil
    import sys
    if shutil.which("nvidia-smi") or torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra = ["--config", "gpu_runs=always", "profile=tiny"] if profile.endswith("tiny") else []
    target = "results/runs/ptb/ff/metrics.json" if extra else "results/runs/ptb/vlnhmm-32768/metrics.json"
    if extra:  # the tiny profile's ff run on `device: auto`
        overlay = tmp_path / "auto.yaml"
        overlay.write_text("defaults: {train: {device: auto}}\n")
        extra += ["--configfile", "config/tiny.yaml", str(overlay)]
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "--profile", profile, "--directory",
                           str(tmp_path / "w"), *extra], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "need a GPU" in out and "no job was started" in out, out[-3000:]
    assert not (tmp_path / "w/data").exists()
    message = next(line for line in out.splitlines() if "need a GPU" in line)
    assert ("--profile profiles/tiny" in message) == (profile == "profiles/gpu"), message  # not the one in use
    assert ("ptb/vlnhmm-32768" if profile == "profiles/gpu" else "ptb/ff") in message  # the run named with its dataset


def test_the_gpu_profile_without_a_gpu_stops_before_any_job(tmp_path):
    """--profile profiles/gpu on a machine without one: its GPU runs are not left out silently, also with a
    --config on the command line (which replaces the profile's own `config:` entries)."""
    import shutil
    import sys
    if shutil.which("nvidia-smi") or torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "results/table1.csv", "--profile", "profiles/gpu",
                           "--directory", str(tmp_path / "w"), "--config", f"mirror={tmp_path / 'none'}"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no job was started" in out and "train them on this CPU" not in out, out[-3000:]
    message = next(line for line in out.splitlines() if "need a GPU" in line)
    assert "ptb/ff" in message and "--profile profiles/tiny" in message
    assert not (tmp_path / "w/data").exists()


# 12. a bundle built for sm_80 on an sm_90 GPU (simulated): the fallback is named, or refused naming both
def test_cuda_arch_fallback_is_said_and_an_older_gpu_refused(tmp_path, capsys):
    from hmm.kernels.build import ABI, MANIFEST
    from hmm.kernels.runtime import KernelError, _KernelDir
    (tmp_path / MANIFEST).write_text(json.dumps({
        "target": "cuda", "abi": ABI, "states": [8], "archs": ["sm_80"],
        "kernels": [{"n": 8, "arch": "sm_80", "library": "scan_n8_sm_80.so", "binary": "scan_n8_sm_80.fatbin"}]}))
    kernels = _KernelDir(tmp_path)
    assert kernels.pick(8, "sm_80")["arch"] == "sm_80" and capsys.readouterr().err == ""
    assert kernels.pick(8, "sm_90")["arch"] == "sm_80"
    said = capsys.readouterr().err
    assert "this GPU is sm_90" in said and "no sm_90 kernels" in said and "loading the sm_80 ones" in said
    kernels.pick(8, "sm_90")
    assert capsys.readouterr().err == ""  # once
    with pytest.raises(KernelError, match=r"no cuda kernel for n=8 usable on sm_75 .*built: \['sm_80'\]"):
        kernels.pick(8, "sm_75")
