"""The training loop: exact resume after a kill, NaN guard, device errors, perplexity definition."""
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import resolve_run
from pipeline.data.corpus import Corpus
from pipeline.integrity import SUMS, read_sums, record, verify_dir
from pipeline.training.models import build_model
from pipeline.training.errors import TrainingError
from pipeline.training.evaluate import evaluate
from pipeline.training.train import resolve_device, train

DEFAULTS = {"train": {"device": "cpu", "evals_per_epoch": 4, "patience": 1, "seed": 7},
            "vlnhmm": {"num_states": 32, "num_clusters": 4, "hidden": 16, "batch_size": 8, "bptt": 16, "epochs": 2},
            "lstm": {"hidden": 16, "batch_size": 8, "bptt": 16, "epochs": 2},
            "ff": {"hidden": 16, "batch_size": 8, "bptt": 16, "epochs": 2}}


def round_robin_clusters(data: Path, m: int) -> Path:
    """A valid cluster file (word i -> cluster i mod m); Brown clustering has its own tests."""
    vocab = Corpus.load(data).vocab
    path = data / f"rr-{m}.tsv"
    path.write_text("word\tcluster\tbits\tcount\n" + "".join(
        f"{w}\t{i % m}\t0\t{c}\n" for i, (w, c) in enumerate(zip(vocab.tokens, vocab.counts))))
    record(path)
    return path


def write_spec(tmp: Path, model: str) -> Path:
    run = resolve_run({"name": f"t-{model}", "dataset": "ptb", "model": model}, DEFAULTS)
    path = tmp / "spec.json"
    path.write_text(run.to_json())
    return path


def cli(spec, data, out, ckpt):
    return [sys.executable, "-m", "pipeline.training.train", "--spec", str(spec), "--data", str(data), "--clusters",
            str(round_robin_clusters(data, 4)), "--out", str(out), "--checkpoint", str(ckpt)]


@pytest.mark.parametrize("model", ["vlnhmm", "lstm"])
def test_resume_after_kill_equals_uninterrupted(small_ptb, tmp_path, model):
    spec = write_spec(tmp_path, model)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(cli(spec, small_ptb, full, full / "ckpt.pt"), check=True, env=env, capture_output=True)
    expected = json.loads((full / "metrics.json").read_text())

    cut = tmp_path / "cut"
    ckpt = cut / "ckpt.pt"
    proc = subprocess.Popen(cli(spec, small_ptb, cut, ckpt), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    provisional = cut / "metrics.json"  # written at every check: if there, it says the run is incomplete
    assert not provisional.exists() or json.loads(provisional.read_text())["status"].startswith("incomplete")
    step = torch.load(ckpt, weights_only=False)["state"]["step"]
    resumed = subprocess.run(cli(spec, small_ptb, cut, ckpt), check=True, env=env, capture_output=True, text=True)
    assert f"resumed from {ckpt} at step {step}" in resumed.stdout
    got = json.loads((cut / "metrics.json").read_text())
    for key in ("valid_ppl", "test_ppl", "train_ppl", "best_step", "steps", "params"):
        assert got[key] == expected[key], key
    # every check's row, those before the kill too (timings aside: they differ from run to run)
    def checks(path):
        return [{k: r[k] for k in ("step", "epoch", "lr", "train_ppl", "valid_ppl")} for r in csv.DictReader(path.open())]
    assert checks(cut / "curve.csv") == checks(full / "curve.csv") and len(checks(full / "curve.csv")) > 1
    # the history beside the checkpoint holds both segments: the first's header and checks, then the resumed one's
    history = (cut / "train.log").read_text()
    first, second = history.split(f"resumed from {ckpt} at step {step}")
    assert " parameters on " in first and f"step {step:>7,}" in first and " done: measured" in second
    assert (full / "train.log").read_text().count(" parameters on ") == 1   # a fresh run: one segment


def test_perplexity_counts_every_token(small_ptb):
    """A model that gives every word probability 1/V has perplexity exactly V (N counts <eos>)."""
    corpus = Corpus.load(small_ptb)
    V = len(corpus.vocab)

    class Uniform(torch.nn.Module):
        def initial_state(self, b):
            return None

        def forward(self, x, mask, carry):
            return -math.log(V) * mask.sum(1).double(), carry

    ppl, ms = evaluate(Uniform(), corpus.splits["valid"], 16, 32, torch.device("cpu"))
    assert ppl == pytest.approx(V, rel=1e-9)


def test_nan_loss_stops_with_step_and_batch(small_ptb, tmp_path):
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS)
    corpus = Corpus.load(small_ptb)
    model = build_model(run, corpus)
    with torch.no_grad():
        model.emb.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1 \(epoch 1, batch 1/\d+\); lr 1.00e-03 may be "
                       r"too high; no checkpoint of this run was written yet"):
        train(run, corpus, model, tmp_path / "out", tmp_path / "ckpt.pt")
    assert not (tmp_path / "out" / "metrics.json").exists()
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1 .*this process keeps no checkpoint "
                       r"\(--no-checkpoint\)"):  # the GPU node's runs say so instead
        train(run, corpus, model, tmp_path / "out", tmp_path / "node" / "ckpt.pt", on_disk=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_run_without_gpu_says_what_to_do(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TrainingError, match="tiny profile.*profiles/cpu.*device: cpu"):
        resolve_device("auto")
    # a GPU machine (nvidia-smi) with torch's CPU build: the fix is the CUDA build
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(TrainingError, match="is a CPU build.*REPRO_TORCH=cuda ./repro setup"):
        resolve_device("auto")


def test_a_number_nested_in_config_text_says_why():
    from hmm.config import ConfigError
    with pytest.raises(ConfigError, match="got '64' \\(a value nested inside --config arrives as text"):
        resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, {"ff": {"hidden": "64"}})


def test_checkpoint_of_other_data_is_set_aside(small_ptb, tmp_path, capsys):
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 8, "epochs": 1}})
    corpus = Corpus.load(small_ptb)
    ckpt = tmp_path / "ckpt.pt"
    train(run, corpus, build_model(run, corpus), tmp_path / "a", ckpt, fingerprint="data-1")
    first = json.loads((tmp_path / "a/metrics.json").read_text())
    again = train(run, corpus, build_model(run, corpus), tmp_path / "b", ckpt, fingerprint="data-2")
    assert (next(tmp_path.glob("stale-*")) / "ckpt.pt").exists()
    out = capsys.readouterr().out
    assert "made with other settings or data" in out and "resumed" not in out
    assert again["steps"] == first["steps"]


def test_a_finished_run_writes_the_record_of_its_files(small_ptb, tmp_path):
    """SHA256SUMS beside metrics.json: metrics.json, docs.npz and curve.csv, checked by the tables."""
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 8, "epochs": 1}})
    corpus = Corpus.load(small_ptb)
    train(run, corpus, build_model(run, corpus), tmp_path / "out", tmp_path / "ckpt.pt")
    assert sorted(read_sums(tmp_path / "out" / SUMS)) == ["curve.csv", "docs.npz", "metrics.json"]
    verify_dir(tmp_path / "out", ["curve.csv", "docs.npz", "metrics.json"], "rerun it")


@pytest.mark.parametrize("matmul_precision, tf32", [("highest", False), ("high", True)])
def test_matmul_precision_also_governs_cudnn(small_ptb, tmp_path, matmul_precision, tf32):
    """cuDNN takes TF32 for convolutions and LSTMs by default: a run in fp32 ("highest") must turn it off."""
    from pipeline.training.train import Trainer

    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff", "matmul_precision": matmul_precision},
                      DEFAULTS | {"ff": {"hidden": 8}})
    corpus = Corpus.load(small_ptb)
    before = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        Trainer(run, corpus, build_model(run, corpus), tmp_path / "out", tmp_path / "ckpt.pt")
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.get_float32_matmul_precision() == matmul_precision
    finally:
        torch.backends.cudnn.allow_tf32 = before[0]
        torch.set_float32_matmul_precision(before[1])


def test_evaluation_follows_the_weights(small_ptb, tmp_path):
    """Fused AdamW updates weights in place without bumping their version counters: the VLNHMM's
    cached evaluation parameters must still follow the weights (valid ppl moves between checks)."""
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "vlnhmm", "epochs": 1}, DEFAULTS)
    corpus = Corpus.load(small_ptb)
    clusters = round_robin_clusters(small_ptb, 4)
    metrics = train(run, corpus, build_model(run, corpus, clusters), tmp_path / "out", tmp_path / "ckpt.pt")
    valid = [float(line.split(",")[4]) for line in (tmp_path / "out/curve.csv").read_text().splitlines()[1:]]
    assert len(set(valid)) == len(valid), valid
    assert metrics["transition_path"] == "dense"  # a small CPU run takes the faster path there, and says so


def test_checkpoint_of_other_code_is_set_aside(small_ptb, tmp_path, capsys):
    """A checkpoint whose weights do not fit the model (written by an older version of the code, with
    the same settings) is set aside, and the run starts over from its initial weights."""
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 8, "epochs": 1}})
    corpus = Corpus.load(small_ptb)
    ckpt = tmp_path / "ckpt.pt"
    first = train(run, corpus, build_model(run, corpus), tmp_path / "a", ckpt, fingerprint="same")
    state = torch.load(ckpt, weights_only=False)
    state["model"] = {"renamed." + k: v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    record(ckpt)  # intact, only of other code
    again = train(run, corpus, build_model(run, corpus), tmp_path / "b", ckpt, fingerprint="same")
    assert (next(tmp_path.glob("stale-*")) / "ckpt.pt").exists() and "does not fit this code's model" in capsys.readouterr().out
    assert again["steps"] == first["steps"]


def test_status_reads_where_each_run_stands(small_ptb, tmp_path, monkeypatch):
    """./repro status (pipeline.training.status) from a real run's history and metrics: finished, then
    interrupted (its metrics gone, its checkpoint kept), stopped part-way (no checkpoint either), then training now
    (a live process holding its checkpoint)."""
    from datetime import datetime, timezone

    from pipeline.training import status

    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 8, "epochs": 2}})
    corpus = Corpus.load(small_ptb)
    train(run, corpus, build_model(run, corpus), tmp_path / run.out_dir, tmp_path / run.checkpoint)
    history = (tmp_path / run.checkpoint).with_name("train.log").read_text()
    checks = [line for line in history.splitlines() if "valid ppl" in line and " step " in line]
    done = status.standing(run, tmp_path, {})
    metrics = json.loads((tmp_path / run.out_dir / "metrics.json").read_text())
    assert done.state == "finished" and f"valid {metrics['valid_ppl']:.2f}" in done.detail
    assert done.step == done.total == metrics["steps"] and done.epoch == 2.0 and len(checks) == 2
    assert done.best == min(float(c.split("valid ppl")[1].split("|")[0]) for c in checks)
    (tmp_path / run.out_dir / "metrics.json").unlink()
    interrupted = status.standing(run, tmp_path, status.running_checkpoints())
    assert interrupted.state == "interrupted" and interrupted.hours_left == 0, interrupted
    assert "goes on from its last check" in interrupted.detail
    assert status.time_to_train(run, tmp_path).startswith("ptb/t: goes on from its checkpoint at epoch 2 of 2: about 0.0 h")
    # a session's end kills the trainer and snakemake at once: the last check's record stays, 'incomplete'
    (tmp_path / run.out_dir / "metrics.json").write_text(json.dumps(metrics | {
        "status": "incomplete: last check at step 2 of 4", "test_ppl": None, "eval_ms_per_batch": None}))
    assert status.standing(run, tmp_path, {}).state == "interrupted"
    (tmp_path / run.out_dir / "metrics.json").unlink()
    # its lock names the host of its last trainer: a cluster job's node, whose processes status cannot see
    lock = (tmp_path / run.checkpoint).with_name("train.lock")
    assert lock.read_text().split()[1] == socket.gethostname()
    lock.write_text("4242 node17\n")
    elsewhere = status.standing(run, tmp_path, status.running_checkpoints())
    assert elsewhere.state == "interrupted" and "its last trainer ran on node17 (pid 4242)" in elsewhere.detail
    assert "import torch" not in subprocess.run(  # status (also run in snakemake's process) stays light
        [sys.executable, "-c", "import sys, pipeline.training.status; print('import torch' * ('torch' in sys.modules))"],
        capture_output=True, text=True, check=True, cwd=Path(status.__file__).parents[2]).stdout
    checkpoint, kept = tmp_path / run.checkpoint, tmp_path / "kept.pt"
    checkpoint.rename(kept)  # its history without a checkpoint: nothing to go on from
    stopped = status.standing(run, tmp_path, status.running_checkpoints())
    assert stopped.state == "stopped" and stopped.detail == "", stopped
    kept.rename(checkpoint)
    other = resolve_run({"name": "u", "dataset": "ptb", "model": "ff"}, DEFAULTS)
    reference = tmp_path / "reference"
    assert status.standing(other, tmp_path, {}, reference).state == "not started"
    assert status.time_to_train(other, tmp_path, reference) == \
        "ptb/u: no run of its settings has been timed here (docs/cpu.md gives estimates)"
    # never trained here, but committed as a reference run: filed, with that run's numbers
    (reference / other.filed_as).mkdir(parents=True)
    filed_metrics = {"status": "measured", "valid_ppl": 140.45, "test_ppl": 129.12, "device_name": "AMD EPYC",
                     "provenance": {"date": "2026-12-06T01:02:03+00:00"}, "spec": other.result_spec()}
    (reference / other.filed_as / "metrics.json").write_text(json.dumps(filed_metrics))
    filed = status.standing(other, tmp_path, {}, reference)
    assert filed.state == "filed" and "valid 140.45, test 129.12 (AMD EPYC, 2026-12-06" in filed.detail
    (reference / other.filed_as / "metrics.json").write_text(json.dumps(filed_metrics | {"seconds_per_epoch": 36.0}))
    assert status.time_to_train(other, tmp_path, reference).startswith(
        f"ptb/u: about {36.0 * other.train.epochs / 3600:.1f} h for its {other.train.epochs:g} epochs at the speed of "
        "its filed run (AMD EPYC;")
    assert "time cap" not in status.time_to_train(other, tmp_path, reference)
    capped_run = resolve_run({"name": "u", "dataset": "ptb", "model": "ff", "max_seconds": 36}, DEFAULTS)
    assert status.time_to_train(capped_run, tmp_path, reference).endswith(  # it still finds the filed run's speed
        "; its time cap (max_seconds 36) stops this process after about 0.0 h, at the last check that fits, its "
        "checkpoint kept to go on from") and "at the speed of its filed run" in status.time_to_train(
        capped_run, tmp_path, reference)
    # a reference of other settings (e.g. the full-size run beside a tiny profile's of the same name) is not it
    smaller = resolve_run({"name": "u", "dataset": "ptb", "model": "ff", "hidden": 4}, DEFAULTS)
    assert status.standing(smaller, tmp_path, {}, reference).state == "not started"
    assert status.standing(run, tmp_path, {}, reference).state == "interrupted"  # a local run comes first
    capped = json.dumps({"train": {"max_seconds": 3600}})  # a time cap ends the run before its planned steps
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pipeline.training.train",
                               "--spec", capped, "--checkpoint", run.checkpoint], cwd=tmp_path)
    try:
        for _ in range(50):
            if status.standing(run, tmp_path, status.running_checkpoints()).state == "training now":
                break
            time.sleep(0.1)
        live = status.standing(run, tmp_path, status.running_checkpoints())
        ends = {f"{datetime.fromtimestamp(time.time() + 3600 + d, timezone.utc):%H:%M} UTC" for d in (-60, 0, 60)}
        assert live.state == "training now" and "time cap (max_seconds): ends by about" in live.detail
        assert any(t in live.detail for t in ends), (live.detail, ends)  # its start + max_seconds
    finally:
        holder.kill()
    # cut short by a time cap, its checkpoint kept: it can go on (snakemake must be told: --forcerun)
    (tmp_path / run.out_dir / "metrics.json").write_text(json.dumps(metrics | {"status": "cut short: time, max_seconds 60"}))
    cut = status.standing(run, tmp_path, {})
    assert cut.state == "cut short" and cut.detail.startswith("cut short: time"), cut
    target = f"{run.out_dir}/metrics.json"
    assert status.continue_command([target], "profiles/cpu", ["config/time-cap.yaml"], None, None) == (
        f"./repro run --profile profiles/cpu --configfile config/time-cap.yaml {target} --forcerun train")
    (tmp_path / run.out_dir / "metrics.json").write_text(json.dumps(metrics | {"status": "cut short: max_steps 3"}))
    assert status.standing(run, tmp_path, {}).state == "finished"  # max_steps is in its fingerprint: no going on
    (tmp_path / run.out_dir / "metrics.json").unlink()
    text = status.table([done, stopped])
    assert "ptb/t" in text and "finished" in text and "stopped" in text
    # a process stopped by an error leaves the reason as its last history line; status shows it
    if not torch.cuda.is_available():
        import pipeline.training.train as trainer
        from pipeline.training import results
        monkeypatch.setattr(trainer, "die_with_parent", lambda *a: True)  # main's, for a job; not this process
        monkeypatch.setattr(results, "JOB_PARENT", None)
        train_main = trainer.main
        cuda_run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff", "device": "cuda"},
                               DEFAULTS | {"ff": {"hidden": 8, "epochs": 2}})
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            train_main(["--spec", json.dumps(cuda_run.to_dict()), "--data", str(small_ptb), "--out",
                        str(tmp_path / "cuda-out"), "--checkpoint", str(tmp_path / run.checkpoint)])
        why = status.standing(run, tmp_path, {})
        assert why.state == "stopped" and why.detail.startswith("device: cuda needs a CUDA GPU"), why.detail


def test_out_of_memory_stops_with_its_reason_in_the_history(small_ptb, tmp_path, monkeypatch):
    """Out of memory (too many runs on one GPU, say) ends the process with a message and leaves the reason in
    the run's history, where ./repro status shows it."""
    import pipeline.training.train as trainer
    from pipeline.training import results, status

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB\nmore detail")

    monkeypatch.setattr(trainer, "die_with_parent", lambda *a: True)
    monkeypatch.setattr(results, "JOB_PARENT", None)
    monkeypatch.setattr(trainer, "train", full)
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 8, "epochs": 1}})
    with pytest.raises(SystemExit, match="out of memory on cpu: CUDA out of memory. Tried to allocate 4.00 GiB"):
        trainer.main(["--spec", json.dumps(run.to_dict()), "--data", str(small_ptb), "--out", str(tmp_path / "out"),
                      "--checkpoint", str(tmp_path / run.checkpoint)])
    why = status.standing(run, tmp_path, {})
    assert why.state == "stopped" and why.detail.startswith("out of memory on cpu"), why.detail


def test_a_run_without_checkpoints_scores_the_same_best_weights(small_ptb, tmp_path):
    """--no-checkpoint (the GPU node, whose disk does not outlive the job): nothing is written beside the
    checkpoint path but the history, and the best weights kept in memory score exactly as best.pt's do."""
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff"}, DEFAULTS | {"ff": {"hidden": 8, "epochs": 1}})
    corpus = Corpus.load(small_ptb)
    results = {}
    for on_disk in (True, False):
        torch.manual_seed(run.train.seed)
        ckpt = tmp_path / f"disk-{on_disk}" / "ckpt.pt"
        results[on_disk] = train(run, corpus, build_model(run, corpus), tmp_path / f"out-{on_disk}", ckpt,
                                 fingerprint="same", on_disk=on_disk)
        written = sorted(p.name for p in ckpt.parent.iterdir())
        assert written == (["best.pt", "best.pt.sha256", "ckpt.pt", "ckpt.pt.sha256", "train.lock", "train.log"]
                           if on_disk else ["train.lock", "train.log"]), written
    for key in ("valid_ppl", "test_ppl", "best_step", "steps"):
        assert results[False][key] == results[True][key], key
    # the best weights come back from memory even after the model moved on from them
    from pipeline.training.checkpoints import BestInMemory
    model = build_model(run, corpus)
    kept = BestInMemory(tmp_path / "none.pt", run.key)
    kept.save_best(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    kept.load_best(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_two_trainers_sharing_a_log_never_splice_their_lines():
    """Two snakemake jobs at once write to one log: each line must arrive whole (a line and its newline in one
    write), not as 'first line[second trainer] second line' followed by two newlines."""
    from conftest import ROOT

    script = (
        "import sys\nfrom pipeline.training.progress import say, progress\n"
        "bar = progress(4000, desc='x')\n"
        "for i in range(4000):\n"
        "    say(f'[{sys.argv[1]}] ' + 'x' * 150 + f' {i}')\n"
        "    bar.update(1)\n"
    )
    read, write = os.pipe()
    trainers = [
        subprocess.Popen([sys.executable, "-c", script, name], cwd=ROOT, stdout=write, stderr=subprocess.DEVNULL)
        for name in ("a", "b")
    ]
    os.close(write)
    with os.fdopen(read) as log:
        lines = log.read().splitlines()
    assert [t.wait() for t in trainers] == [0, 0]
    assert sorted(lines) == sorted(f"[{name}] " + "x" * 150 + f" {i}" for name in "ab" for i in range(4000))
