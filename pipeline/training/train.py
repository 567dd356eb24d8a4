"""The training loop shared by every trained model (FF, LSTM, VLNHMM).

One run = one resolved :class:`pipeline.config.Run`.  :class:`Trainer` takes it in named steps:

* ``restore``: resume from the run's checkpoint if it was made from the same settings and data;
* ``step``: one optimizer step on one BPTT window (loss = -(sum of log p) / tokens, AdamW,
  gradient clipping); the model's carry (HMM posterior, LSTM state, FF context) flows from
  window to window; nothing in it waits for the GPU (token counts come from the CPU mask, loss
  sums and the first non-finite step are kept on the device);
* ``check``: ``evals_per_epoch`` times an epoch (where: ``check_points``): validation perplexity,
  lr schedule (multiply by ``lr_decay`` after ``patience`` checks without improvement as
  ``plateau`` defines it), best weights, an atomic checkpoint, ``curve.csv`` and a provisional
  ``metrics.json``;
* ``finish``: the best (or, ``test_weights: last``, the final) weights scored on valid and test, token
  by token; ``metrics.json`` with each perplexity's bootstrap interval over documents, ``docs.npz``
  (log-likelihood and tokens per document, :mod:`pipeline.intervals`) and ``curve.png``.

An interrupted run continues from its last check and ends exactly where an uninterrupted run
ends.  A non-finite training loss, a validation perplexity that is not finite, a full disk: each
stops the run with a message naming the step, keeping the last checkpoint.  ``max_steps`` and
``max_seconds`` end a run early at a check; its status then says ``cut short``.  The run's log lines
are also kept in ``train.log`` beside its checkpoint, every segment's in one file (a fresh start
begins it anew): a job's own log (snakemake's) holds the last segment only.

Perplexity = exp(-sum log p / N), N = every real token including each ``<eos>``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from hmm import normalizer
from pipeline import intervals
from pipeline.config import Run, run_history
from pipeline.data.corpus import Corpus, Windows
from pipeline.files import write_json
from pipeline.integrity import IntegrityError, recorded, sha256
from pipeline.lifetime import die_with_parent
from pipeline.provenance import commit
from pipeline import cpu
from pipeline.training import precision, results
from pipeline.training.checkpoints import BestInMemory, Checkpoint, RunLocked, fingerprint_of, run_lock
from pipeline.training.errors import TrainingError
from pipeline.training.evaluate import evaluate, perplexity
from pipeline.training.models import build_model, count_parameters
from pipeline.training.progress import progress, say
from pipeline.training.results import run_metrics, write_curve, write_metrics
from pipeline.training.status import STOPPED
from pipeline.training.timing import synchronize

NAN_CHECK_EVERY = 50  # steps between host reads of the device-side non-finite flag


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.version.cuda is None and shutil.which("nvidia-smi"):  # a GPU machine with torch's CPU build
        raise TrainingError(
            f"device: {name} needs a CUDA GPU and this torch ({torch.__version__}) is a CPU build, while this "
            "machine has nvidia-smi: install torch's CUDA build with `REPRO_TORCH=cuda ./repro setup`")
    raise TrainingError(
        f"device: {name} needs a CUDA GPU and torch sees none (torch {torch.__version__}). "
        "This is a paper-size run; on a CPU-only machine use the tiny profile "
        "(`./repro run --profile profiles/tiny all`), the CPU profile for the rows a CPU trains at full size "
        "(`./repro run --profile profiles/cpu`), or set `device: cpu` for this run in the config.")


class Trainer:
    """Train ``model`` as ``run`` says (see the module docstring for the steps)."""

    def __init__(self, run: Run, corpus: Corpus, model: torch.nn.Module, out: Path, checkpoint: Path,
                 fingerprint: str | tuple[str, ...] | None = None, inputs: dict | None = None, on_disk: bool = True):
        """``fingerprint``: what a checkpoint must have to be resumed (:class:`Checkpoint`; default: the run's
        settings); ``inputs``: the SHA-256 of what the run reads beyond ``corpus`` (clusters, kernels), for
        metrics.json; ``on_disk`` False: no checkpoint is written or resumed, the best weights stay in memory
        (:class:`BestInMemory`; the history and the run lock still live beside ``checkpoint``)."""
        cfg = self.cfg = run.train
        self.inputs = {"data": dict(corpus.digests)} | (inputs or {})
        self.run, self.corpus, self.model, self.out, self.checkpoint = run, corpus, model, Path(out), Path(checkpoint)
        self.fingerprint = fingerprint or fingerprint_of(run)
        self.device = resolve_device(cfg.device)
        torch.set_float32_matmul_precision(cfg.matmul_precision)
        # cuDNN's convolutions and LSTMs take TF32 by default on a GPU: only where the products may
        torch.backends.cudnn.allow_tf32 = cfg.matmul_precision != "highest"
        self.precision = precision.choose(cfg.cpu_precision, run.model, self.device)
        if self.device.type == "cpu":  # each step's large tensors reuse freed memory: no page faults
            cpu.keep_freed_memory()
        if hasattr(model, "matmul_dtype"):
            model.matmul_dtype = self.precision.dtype
        model.to(self.device).train()
        # fused AdamW (CPU and CUDA): one kernel per step, and no read of the step count to the host;
        # a captured step needs its state and lr on the device (the lr schedule then updates it in place)
        graphed = cfg.cuda_graph and self.device.type == "cuda"
        lr = torch.tensor(cfg.lr, device=self.device) if graphed else cfg.lr
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=True,
                                     capturable=graphed)
        mode = "min" if cfg.plateau == "min-valid-nll" else "max"
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode=mode, factor=cfg.lr_decay,
                                                                patience=cfg.patience)
        self.steps_per_epoch = len(Windows(corpus.splits["train"], cfg.batch_size, cfg.bptt))
        n, evals = self.steps_per_epoch, cfg.evals_per_epoch
        self.check_every = max(1, math.ceil(n / evals) if cfg.check_points == "even" else n // (evals - 1))
        self.valid_tokens = Windows(corpus.splits["valid"], cfg.eval_batch_size, cfg.bptt).num_tokens
        self.total_steps = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.last_step = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        self.params = count_parameters(model)
        self.ckpt = (Checkpoint(self.checkpoint, self.fingerprint, self.device, run.key) if on_disk
                     else BestInMemory(self.checkpoint, run.key))
        self.history = run_history(self.checkpoint)  # every segment's log lines (module docstring)
        self.valid_batches = len(Windows(corpus.splits["valid"], cfg.eval_batch_size, cfg.bptt))
        self.saved_step: int | None = None  # the step of the checkpoint on disk (written or resumed here)
        self.state = {"step": 0, "carry": None, "best": math.inf, "best_step": 0, "curve": [], "wall": 0.0,
                      "train_logp": 0.0, "train_tokens": 0}
        self.cut_by_time = False
        self._windows: tuple[int, Windows] | None = None
        self._reset_device_sums()
        self.graphs = None
        if graphed:
            from pipeline.training.graphs import CapturedStep
            self.graphs = CapturedStep(self)

    @property
    def name(self) -> str:
        return self.run.key

    def say(self, line: str) -> None:
        """One log line: printed, and appended to the run's history beside its checkpoint."""
        say(line)
        self.history.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history, "a") as f:
            f.write(line + "\n")

    # -- restore --------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the checkpoint where it may be resumed (:class:`Checkpoint`); else start over."""
        state = self.ckpt.load(self.model, self.opt, self.sched)
        if state is None:
            self.history.unlink(missing_ok=True)  # a fresh start: a new history
            return
        self.state, self.saved_step = state, state["step"]
        self._reset_device_sums()
        self.say(f"[{self.name}] resumed from {self.checkpoint} at step {self.state['step']:,}/{self.last_step:,}")

    # -- step -------------------------------------------------------------------------------

    def _reset_device_sums(self) -> None:
        """Device-side running sums, updated in place (so a captured step updates them too)."""
        if not hasattr(self, "loss_sum"):
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # sum of log p
            self.bad_step = torch.zeros((), dtype=torch.long, device=self.device)      # first non-finite step
            self.step_t = torch.zeros((), dtype=torch.long, device=self.device)        # the step count
        self.loss_sum.zero_()
        self.bad_step.zero_()
        self.step_t.fill_(self.state["step"])

    def window(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training window of ``step`` (x, mask on the CPU); each epoch reshuffles the documents."""
        epoch = step // self.steps_per_epoch
        if self._windows is None or self._windows[0] != epoch:
            ids = self.corpus.ordered("train", np.random.default_rng(self.cfg.seed + epoch))
            windows = Windows(ids, self.cfg.batch_size, self.cfg.bptt)
            if self.device.type == "cuda":  # page-locked: copies to the GPU do not wait for it
                windows.x, windows.mask = windows.x.pin_memory(), windows.mask.pin_memory()
            self._windows = (epoch, windows)
        return self._windows[1].window(step % self.steps_per_epoch)

    def step(self, x: torch.Tensor, mask: torch.Tensor, ntok: int) -> None:
        """One optimizer step on window (x, mask) of ``ntok`` real tokens (replayed from a CUDA graph
        where ``cuda_graph`` is set and the capture worked)."""
        first = self.state["step"] % self.steps_per_epoch == 0
        if first:
            self.state["carry"] = self.model.initial_state(x.shape[0])
        if self.graphs is None or not self.graphs.step(x, mask, ntok, first):
            self.state["carry"] = self.step_body(x, mask, torch.tensor(float(ntok), device=self.device),
                                                 self.state["carry"])
        self.state["step"] += 1

    def step_body(self, x, mask, ntok, carry, zero_grad: bool = True):
        """The step itself, on device tensors only (``ntok`` a 0-d tensor): loss, backward, clip,
        AdamW, the device-side sums; returns the carry.  Captured as is by pipeline.training.graphs."""
        logp, carry = self.model(x, mask, carry)
        loss = -logp.sum() / ntok
        if zero_grad:
            self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.opt.step()
        self.step_t.add_(1)
        finite = torch.isfinite(loss)
        self.bad_step.copy_(torch.where(~finite & (self.bad_step == 0), self.step_t, self.bad_step))
        self.loss_sum.add_(torch.where(finite, -loss.detach().double() * ntok, 0.0))
        return carry

    def guard(self) -> None:
        """Raise if a step since the last guard had a non-finite loss (one host read)."""
        bad = int(self.bad_step)
        if bad:
            epoch, batch = divmod(bad - 1, self.steps_per_epoch)
            lr = float(self.opt.param_groups[0]["lr"])
            raise TrainingError(f"[{self.name}] non-finite loss at step {bad} (epoch {epoch + 1}, batch {batch + 1}/"
                                f"{self.steps_per_epoch}); lr {lr:.2e} may be too high; {self.kept()}")

    def kept(self) -> str:
        """What a stopped run leaves to resume from (said in its error)."""
        return self.ckpt.kept(self.saved_step)

    # -- check ------------------------------------------------------------------------------

    def check(self, tokens: int, seconds: float) -> dict:
        """Validation check after ``tokens`` tokens trained in ``seconds`` since the last one."""
        self.guard()
        st, cfg = self.state, self.cfg
        st["train_logp"] += float(self.loss_sum)
        st["train_tokens"] += tokens
        self._reset_device_sums()
        valid_ppl, ms = evaluate(self.model, self.corpus.splits["valid"], cfg.eval_batch_size, cfg.bptt, self.device)
        epoch = st["step"] / self.steps_per_epoch
        if not math.isfinite(valid_ppl):
            what = "overflows" if valid_ppl == math.inf else "not finite"
            raise TrainingError(f"[{self.name}] validation perplexity {what} at step {st['step']} (epoch "
                                f"{math.ceil(epoch)}, {epoch:.2f} epochs done); lr {float(self.opt.param_groups[0]['lr']):.2e} "
                                f"may be too high; {self.kept()}")
        train_ppl = perplexity(-st["train_logp"] / st["train_tokens"])
        lr = float(self.opt.param_groups[0]["lr"])
        nll = math.log(valid_ppl)
        for _ in range(self.checks_at(st["step"]) or 1):  # the run's last step may fall between check points
            self.sched.step(nll if cfg.plateau == "min-valid-nll" else -nll * self.valid_tokens)
        if nll < st["best"]:
            st["best"], st["best_step"] = nll, st["step"]
            self.ckpt.save_best(self.model)
        st["wall"] += seconds
        row = {"step": st["step"], "epoch": round(epoch, 4), "lr": lr, "train_ppl": round(train_ppl, 3),
               "valid_ppl": round(valid_ppl, 3), "tokens_per_s": round(tokens / max(seconds, 1e-9)),
               "eval_ms_per_batch": round(ms, 3), "wall_seconds": round(st["wall"], 2)}
        st["curve"].append(row)
        self.say(f"[{self.name}] step {st['step']:>7,} epoch {epoch:6.2f} | train ppl {train_ppl:8.2f} | "
            f"valid ppl {valid_ppl:8.2f} | lr {lr:.2e} | {row['tokens_per_s']:,} tok/s | eval {ms:.1f} ms/batch")
        st["train_logp"], st["train_tokens"] = 0.0, 0
        self.ckpt.save(self.model, self.opt, self.sched, st)
        self.saved_step = st["step"]
        self.out.mkdir(parents=True, exist_ok=True)
        write_curve(st["curve"], self.out / "curve.csv")
        write_metrics(self.out, self.metrics(status=f"incomplete: last check at step {st['step']:,} of {self.last_step:,} "
                                       f"({epoch:.2f} of {cfg.epochs:g} epochs); no test score yet"))
        return row

    def checks_at(self, step: int) -> int:
        """How many checks fall after ``step`` steps: 0 or 1; 2 where thirds-and-end puts an in-epoch
        check on the epoch's last step (the released code then evaluates twice)."""
        if self.cfg.check_points == "even":
            return int(step % self.check_every == 0)
        position = (step - 1) % self.steps_per_epoch + 1  # 1 .. n within its epoch
        return int(position % self.check_every == 0) + int(position == self.steps_per_epoch)

    # -- finish -----------------------------------------------------------------------------

    def metrics(self, status: str, valid_ppl: float | None = None, test_ppl: float | None = None,
                eval_ms: float | None = None) -> dict:
        return run_metrics(self.run, self.model, self.device, self.params, self.state, self.steps_per_epoch,
                           self.inputs, status, valid_ppl, test_ppl, eval_ms,
                           self.precision.record(self.cfg.cpu_precision))

    def finish(self) -> dict:
        """Score the best (or, test_weights: last, the final) weights on valid and test; write
        metrics.json, curve.csv and curve.png."""
        st, cfg = self.state, self.cfg
        if cfg.test_weights == "best":
            self.ckpt.load_best(self.model)
        docs = {}
        for split in ("valid", "test"):  # every token's score, summed per document (pipeline.intervals)
            # ms per batch: of the test pass (gathering the scores is small beside the model's own work)
            _, ms, token_logp = evaluate(self.model, self.corpus.splits[split], cfg.eval_batch_size, cfg.bptt,
                                         self.device, per_token=True)
            docs[split] = intervals.document_sums(token_logp, self.corpus.docs[split].numpy())
        valid_ppl, test_ppl = (perplexity(-docs[s][0].sum() / docs[s][1].sum()) for s in ("valid", "test"))
        epochs = st["step"] / self.steps_per_epoch
        if st["step"] >= self.total_steps:
            status = "measured"
        elif self.cut_by_time:
            status = f"cut short: time, max_seconds {cfg.max_seconds:g} ({epochs:.2f} of {cfg.epochs:g} epochs)"
        else:
            status = f"cut short: max_steps {cfg.max_steps:,} ({epochs:.2f} of {cfg.epochs:g} epochs)"
        metrics = self.metrics(status, valid_ppl, test_ppl, ms)
        self.out.mkdir(parents=True, exist_ok=True)
        metrics.update(intervals.split_metrics(docs))
        metrics["interval"]["bytes"] = intervals.save_documents(self.out / intervals.DOCS_FILE, docs)
        write_curve(st["curve"], self.out / "curve.csv")
        write_metrics(self.out, metrics)
        try:
            from pipeline.training.curves import plot as plot_curve
        except ImportError:  # a node without matplotlib/pandas: the CSV is the record
            pass
        else:
            plot_curve(self.out / "curve.csv", self.out / "curve.png", self.name)
        lo, hi = metrics["test_ppl_interval"]
        self.say(f"[{self.name}] done: {status}; valid ppl {valid_ppl:.2f}, test ppl {test_ppl:.2f} [{lo:.2f}, {hi:.2f}], "
            f"{self.params:,} params, {st['wall']:.0f} s ({metrics['seconds_per_epoch']} s/epoch), "
            f"eval {ms:.2f} ms/batch")
        return metrics

    # -- the whole run ----------------------------------------------------------------------

    def segment(self) -> dict:
        """Where this process trains the run from its current step (a resumed run has several)."""
        record = {"from_step": self.state["step"], "device": self.device.type, "precision": self.precision.name,
                  "commit": commit()[0], "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if hasattr(self.model, "scan"):  # the VLNHMM's scan backend (an execution setting: it may change on resume)
            record["scan_backend"] = self.model.scan.name
            # CUDA: triton unless its probe (the run's operand precision) failed
            record["normalizer"] = normalizer.impl_for(self.device, precision=getattr(self.model, "precision", "fp32"))
        return record | (cpu.record() if self.device.type == "cpu" else
                         {"device_name": torch.cuda.get_device_name(self.device)})

    def _deadline_near(self, upcoming: float) -> bool:
        """max_seconds (wall time of this process): stop when ``upcoming`` seconds of training, a
        check and the final scoring (valid + test, about 2.5 checks) would not fit any more."""
        if self.cfg.max_seconds is None:
            return False
        elapsed = time.perf_counter() - self.started
        return elapsed + upcoming + 3.5 * self.check_seconds > self.cfg.max_seconds

    def fit(self) -> dict:
        with run_lock(self.checkpoint, self.name):  # one trainer per run at a time
            return self._fit()

    def _fit(self) -> dict:
        self.started, self.check_seconds = time.perf_counter(), 0.0
        self.restore()
        self.state.setdefault("segments", []).append(self.segment())
        path = getattr(self.model, "transition_path", None)
        how = ([f"{path} transition"] if path else []) + (
            [f"{self.model.scan.name} scans"] if hasattr(self.model, "scan") else [])
        if hasattr(self.model, "scan") and self.device.type == "cuda":
            impl = self.state["segments"][-1]["normalizer"]
            how.append(f"{impl} normalizer")
            if impl == "torch" and normalizer.triton_available():
                problem = normalizer.triton_problem(self.device, getattr(self.model, "precision", "fp32"))
                self.say(f"[{self.name}] {problem}: the transition normalizer "
                         "runs as torch tiles (same numbers, slower)")
        where = cpu.describe() if self.device.type == "cpu" else str(self.device)
        self.say(f"[{self.name}] {self.run.model}: {self.params:,} parameters on {where}"
            + (f" ({', '.join(how)})" if how else "") + f"; {self.steps_per_epoch:,} steps/epoch, "
            f"validation every {self.check_every:,} steps, {self.last_step:,} steps")
        if self.device.type == "cpu":
            self.say(f"[{self.name}] training step in {self.precision.name} ({self.precision.reason}); evaluation in fp32")
        bar = progress(total=self.last_step, initial=self.state["step"], desc=self.name, unit="step")
        tokens, start = 0, time.perf_counter()
        while self.state["step"] < self.last_step:
            x, mask = self.window(self.state["step"])
            ntok = int(mask.sum())  # on the CPU: no wait for the GPU
            self.step(x.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True), ntok)
            tokens += ntok
            bar.update(1)
            step = self.state["step"]
            at_check = self.checks_at(step) > 0 or step == self.last_step
            if not at_check and step % NAN_CHECK_EVERY == 0:
                self.guard()
            if not at_check and self._deadline_near(0.0):
                at_check = self.cut_by_time = True  # out of time inside a segment: check now
            if not at_check:
                continue
            synchronize(self.device)
            segment = time.perf_counter() - start
            self.check(tokens, segment)
            self.check_seconds = time.perf_counter() - start - segment
            tokens, start = 0, time.perf_counter()
            if step < self.last_step and self._deadline_near(segment):
                self.cut_by_time = True
            if self.cut_by_time:
                break
        bar.close()
        return self.finish()


def train(run: Run, corpus: Corpus, model: torch.nn.Module, out: Path, checkpoint: Path,
          fingerprint: str | tuple[str, ...] | None = None, inputs: dict | None = None, on_disk: bool = True) -> dict:
    """Train ``model`` as ``run`` says; resume from ``checkpoint`` if it has the same fingerprint (``on_disk``
    False: none is written or resumed, :class:`Trainer`)."""
    return Trainer(run, corpus, model, out, checkpoint, fingerprint, inputs, on_disk).fit()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train and evaluate one run (FF, LSTM or VLNHMM).")
    p.add_argument("--spec", required=True, help="the run's resolved spec: JSON text, or a spec.json file")
    p.add_argument("--data", type=Path, help="prepared dataset directory (default: the run's, data/<dataset>)")
    p.add_argument("--clusters", type=Path, help="Brown cluster file (default: the run's)")
    p.add_argument("--kernel-root", type=Path, default=Path("build/kernels"), help="parent of llvm/ and cuda/")
    p.add_argument("--out", type=Path, help="directory for metrics.json and curve.csv (default: the run's)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file, resumed if present (default: the run's)")
    p.add_argument("--no-checkpoint", action="store_true", help="write and resume no checkpoint; keep the best "
                   "weights in memory (a machine whose disk does not outlive the process: the GPU node)")
    a = p.parse_args(argv)
    results.JOB_PARENT = os.getppid()
    die_with_parent(signal.SIGTERM, results.JOB_PARENT)  # the job's shell killed: this process goes too
    run = Run.from_dict(json.loads(a.spec if a.spec.lstrip().startswith("{") else Path(a.spec).read_text()))
    inputs = run.inputs()
    data = a.data or Path(inputs["data"]).parent
    clusters = a.clusters or (Path(inputs["clusters"]) if "clusters" in inputs else None)
    out, checkpoint = a.out or Path(run.out_dir), a.checkpoint or Path(run.checkpoint)
    try:
        resolve_device(run.train.device)
        # CPU: flush denormal floats to zero, as GPUs do.  The released init (N(0, 1) state embeddings) puts many
        # transition probabilities below float32's normal range, where x86 arithmetic is ~5x slower per step
        # (measured: 2.1 against 0.38 s at 1,024 states); only values under 1.2e-38 change.
        torch.set_flush_denormal(True)
        torch.manual_seed(run.train.seed)  # weight init and dropout; restored from the checkpoint on resume
        corpus = Corpus.load(data)
        model = build_model(run, corpus, clusters, a.kernel_root)  # checks the clusters' and kernels' records
        inputs = {"clusters": clusters and recorded(clusters)}
        if getattr(run.settings, "backend", None) == "tvm":
            inputs["kernels"] = sha256(a.kernel_root / run.kernel_target / "manifest.json")  # it pins each library
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "spec.json", run.to_dict())
        train(run, corpus, model, out, checkpoint, fingerprint_of(run, data / "vocab.tsv", data / "stats.json", clusters),
              inputs, on_disk=not a.no_checkpoint)
    except RunLocked as e:  # another process trains this run: its history is not this process's to write
        sys.exit(f"error: {e}")
    except torch.OutOfMemoryError as e:  # e.g. too many runs at once on one GPU: say so where status reads it
        first = str(e).splitlines()[0] if str(e) else "out of memory"
        stop(run.key, checkpoint, f"out of memory on {run.train.device}: {first} (the last checkpoint is kept: run "
                                  "it again with fewer processes on the device, and it resumes)")
    except (TrainingError, IntegrityError) as e:
        stop(run.key, checkpoint, str(e))


def stop(key: str, checkpoint: Path, why: str) -> None:
    """End the process on an error, its reason kept in the run's history (./repro status shows it)."""
    try:
        Path(run_history(checkpoint)).parent.mkdir(parents=True, exist_ok=True)
        with open(run_history(checkpoint), "a") as f:
            f.write(f"[{key}] {STOPPED}{why.removeprefix(f'[{key}] ')}\n")
    except OSError:
        pass
    sys.exit(f"error: {why}")


if __name__ == "__main__":
    main()
