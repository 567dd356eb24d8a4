"""The training loop shared by every trained model (FF, LSTM, VLNHMM).

One run = one ``spec.json`` (a resolved :class:`hmm.config.Run`).  The loop:

* each epoch shuffles the training documents (seeded by seed + epoch) and cuts them into
  ``batch_size`` streams and ``bptt`` windows; the model's carry (HMM posterior, LSTM state,
  FF context) flows from window to window;
* loss = -(sum of log p) / tokens in the batch, AdamW, gradient clipping;
* ``evals_per_epoch`` validation checks per epoch; the lr is multiplied by ``lr_decay``
  after ``patience`` checks without improvement of the validation NLL;
* a checkpoint after every check (atomic), resumed automatically: an interrupted run
  continues from its last check and ends exactly where an uninterrupted run ends;
* a non-finite loss stops the run, naming the step and batch; the last checkpoint stays;
* at the end the best weights are scored on valid and test; ``metrics.json`` and
  ``curve.csv`` (one line per check, plotted as ``curve.png``) are written.

Perplexity = exp(-sum log p / N), N = every real token including each ``<eos>``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hmm.config import Run
from hmm.curves import plot as plot_curve
from hmm.data import Corpus, Windows
from hmm.provenance import CPU_NAME, provenance


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, no GPU where one is required)."""


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    raise TrainingError(
        f"device: {name} needs a CUDA GPU and torch sees none (torch {torch.__version__}). "
        "This is a paper-size run; on a CPU-only machine use the tiny profile "
        "(snakemake --profile profiles/tiny ...) or set `device: cpu` for this run in the config.")


def build_model(run: Run, corpus: Corpus, clusters: Path | None, kernels: list[Path]) -> torch.nn.Module:
    vocab_size = len(corpus.vocab)
    if run.model == "ff":
        from baselines.ff import FFLM
        return FFLM(vocab_size, run.settings.order, run.settings.hidden, run.settings.dropout)
    if run.model == "lstm":
        from baselines.lstm import LSTMLM
        return LSTMLM(vocab_size, run.settings.layers, run.settings.hidden, run.settings.dropout)
    if run.model == "vlnhmm":
        from hmm import inference
        from hmm.clusters import load_clusters
        from hmm.model import VLNHMM
        cfg = run.settings
        scan = inference.TorchScan
        if cfg.backend == "tvm":
            from hmm.kernels import TVMScan
            scan = TVMScan(*kernels)
        cluster_ids = load_clusters(clusters, corpus.vocab) if cfg.constraint == "brown" else None
        return VLNHMM(cfg, vocab_size, cluster_ids, corpus.vocab.index["<eos>"], seed=run.train.seed, scan=scan)
    raise ValueError(f"model {run.model!r} is not trained by this loop")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, batch_size: int, bptt: int, device) -> tuple[float, float]:
    """(perplexity, ms per batch) of ``ids`` scored as ``batch_size`` streams with carry."""
    model.eval()
    windows = Windows(ids, batch_size, bptt)
    total, carry = 0.0, model.initial_state(batch_size)
    _sync(device)
    start = time.perf_counter()
    for x, mask in windows:
        logp, carry = model(x.to(device), mask.to(device), carry)
        total += float(logp.sum())
    _sync(device)
    ms = 1000 * (time.perf_counter() - start) / len(windows)
    model.train()
    return math.exp(-total / windows.num_tokens), ms


def _provenance(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else CPU_NAME
    return provenance() | {"torch": torch.__version__, "device_name": name}


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(model, device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if isinstance(getattr(model, "generator", None), torch.Generator):
        state["model"] = model.generator.get_state()
    return state


def _set_rng_state(model, device, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if "model" in state:
        model.generator.set_state(state["model"])


def fingerprint_of(run: Run, *files: Path | None) -> str:
    """What a checkpoint must match to be resumed: the run's settings and its input files."""
    h = hashlib.sha256(run.to_json().encode())
    for f in files:
        if f is not None:
            h.update(Path(f).read_bytes())
    return h.hexdigest()


def train(run: Run, corpus: Corpus, model: torch.nn.Module, out: Path, checkpoint: Path,
          fingerprint: str | None = None) -> dict:
    """Train ``model`` as ``run`` says; resume from ``checkpoint`` if it has the same fingerprint."""
    cfg = run.train
    fingerprint = fingerprint or fingerprint_of(run)
    device = resolve_device(cfg.device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_decay, patience=cfg.patience)
    steps_per_epoch = len(Windows(corpus.splits["train"], cfg.batch_size, cfg.bptt))
    check_every = max(1, math.ceil(steps_per_epoch / cfg.evals_per_epoch))
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    params = sum(p.numel() for p in model.parameters())
    name = run.key
    state = {"step": 0, "carry": None, "best": math.inf, "best_step": 0, "curve": [], "wall": 0.0,
             "train_logp": 0.0, "train_tokens": 0}
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    best_path = checkpoint.with_name("best.pt")
    if checkpoint.exists():
        ckpt = torch.load(checkpoint, map_location=device, weights_only=False)
        if ckpt.get("fingerprint") != fingerprint:
            stale = checkpoint.with_name("stale.pt")
            os.replace(checkpoint, stale)
            tqdm.write(f"[{name}] {checkpoint} was made with other settings or data: kept as {stale}, starting over")
    if checkpoint.exists():
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        _set_rng_state(model, device, ckpt["rng"])
        state = ckpt["state"]
        tqdm.write(f"[{name}] resumed from {checkpoint} at step {state['step']:,}/{last_step:,}")
    tqdm.write(f"[{name}] {run.model}: {params:,} parameters on {device}; {steps_per_epoch:,} steps/epoch, "
               f"validation every {check_every:,} steps, {last_step:,} steps")

    start = time.perf_counter() - state["wall"]
    window_tokens, window_start = 0, time.perf_counter()
    bar = tqdm(total=last_step, initial=state["step"], desc=name, unit="step", dynamic_ncols=True,
               disable=None, mininterval=2.0)
    epoch, windows = -1, None
    while state["step"] < last_step:
        step = state["step"]
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            windows = Windows(corpus.ordered("train", np.random.default_rng(cfg.seed + epoch)), cfg.batch_size, cfg.bptt)
        batch = step % steps_per_epoch
        if batch == 0:
            state["carry"] = model.initial_state(cfg.batch_size)
        x, mask = (t.to(device) for t in windows.window(batch))
        logp, carry = model(x, mask, state["carry"])
        ntok = int(mask.sum())
        loss = -logp.sum() / ntok
        if not torch.isfinite(loss):
            raise TrainingError(f"[{name}] non-finite loss {loss.item()} at step {step + 1} (epoch {epoch + 1}, "
                                f"batch {batch + 1}/{steps_per_epoch}); the last checkpoint ({checkpoint}) is kept")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        state["carry"], state["step"] = carry, step + 1
        state["train_logp"] += -loss.item() * ntok
        state["train_tokens"] += ntok
        window_tokens += ntok
        bar.update(1)
        if state["step"] % check_every and state["step"] != last_step:
            continue
        # -- validation check -----------------------------------------------------------
        _sync(device)
        tok_s = window_tokens / (time.perf_counter() - window_start)
        valid_ppl, ms = evaluate(model, corpus.splits["valid"], cfg.eval_batch_size, cfg.bptt, device)
        train_ppl = math.exp(-state["train_logp"] / state["train_tokens"])
        lr = opt.param_groups[0]["lr"]
        nll = math.log(valid_ppl)
        sched.step(nll)
        if nll < state["best"]:
            state["best"], state["best_step"] = nll, state["step"]
            _save(model.state_dict(), best_path)
        state["wall"] = time.perf_counter() - start
        state["curve"].append({"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 4),
                               "lr": lr, "train_ppl": round(train_ppl, 3), "valid_ppl": round(valid_ppl, 3),
                               "tokens_per_s": round(tok_s), "eval_ms_per_batch": round(ms, 3),
                               "wall_seconds": round(state["wall"], 2)})
        tqdm.write(f"[{name}] step {state['step']:>7,} epoch {state['step'] / steps_per_epoch:6.2f} | "
                   f"train ppl {train_ppl:8.2f} | valid ppl {valid_ppl:8.2f} | lr {lr:.2e} | "
                   f"{tok_s:,.0f} tok/s | eval {ms:.1f} ms/batch")
        state["train_logp"], state["train_tokens"] = 0.0, 0
        _save({"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
               "scheduler": sched.state_dict(), "rng": _rng_state(model, device), "state": state}, checkpoint)
        window_tokens, window_start = 0, time.perf_counter()
    bar.close()

    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    valid_ppl, _ = evaluate(model, corpus.splits["valid"], cfg.eval_batch_size, cfg.bptt, device)
    # timed on test: the valid pass has built the cached evaluation parameters (warm timing)
    test_ppl, ms = evaluate(model, corpus.splits["test"], cfg.eval_batch_size, cfg.bptt, device)
    epochs_done = state["step"] / steps_per_epoch
    best_check = next(c for c in state["curve"] if c["step"] == state["best_step"])
    status = "measured" if last_step == total_steps else \
        f"cut short: max_steps {cfg.max_steps:,} ({epochs_done:.2f} of {cfg.epochs:g} epochs)"
    metrics = {
        "run": name, "model": run.model, "params": params, "status": status,
        "train_ppl": best_check["train_ppl"], "valid_ppl": valid_ppl, "test_ppl": test_ppl,
        "train_ppl_note": "running training perplexity (under dropout) of the check with the best valid ppl",
        "best_step": state["best_step"], "steps": state["step"], "epochs": round(epochs_done, 4),
        "steps_per_epoch": steps_per_epoch, "wall_seconds": round(state["wall"], 1),
        "seconds_per_epoch": round(state["wall"] / epochs_done, 2), "eval_ms_per_batch": round(ms, 3),
        "eval_batch": [cfg.eval_batch_size, cfg.bptt], "device": device.type,
        "backend": getattr(run.settings, "backend", "torch"), "provenance": _provenance(device),
    }
    metrics["device_name"] = metrics["provenance"]["device_name"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(state["curve"][0]))
        writer.writeheader()
        writer.writerows(state["curve"])
    plot_curve(out / "curve.csv", out / "curve.png", name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tqdm.write(f"[{name}] done: {status}; valid ppl {valid_ppl:.2f}, test ppl {test_ppl:.2f}, "
               f"{params:,} params, {state['wall']:.0f} s ({metrics['seconds_per_epoch']:.1f} s/epoch), "
               f"eval {ms:.2f} ms/batch")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train and evaluate one run (FF, LSTM or VLNHMM).")
    p.add_argument("--spec", required=True, type=Path, help="spec.json of the run")
    p.add_argument("--data", required=True, type=Path, help="prepared dataset directory")
    p.add_argument("--clusters", type=Path, help="Brown cluster file (vlnhmm, constraint brown)")
    p.add_argument("--kernels", type=Path, nargs="*", default=[], help="TVM kernel directories (backend tvm)")
    p.add_argument("--out", required=True, type=Path, help="directory for metrics.json and curve.csv")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (resumed if present)")
    a = p.parse_args(argv)
    run = Run.load(a.spec)
    try:
        resolve_device(run.train.device)
        torch.manual_seed(run.train.seed)  # weight init and dropout; restored from the checkpoint on resume
        corpus = Corpus.load(a.data)
        model = build_model(run, corpus, a.clusters, a.kernels)
        data_files = [a.data / "vocab.tsv", a.data / "stats.json", a.clusters]
        train(run, corpus, model, a.out, a.checkpoint, fingerprint_of(run, *data_files))
    except TrainingError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
