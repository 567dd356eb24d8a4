"""The training step captured as CUDA graphs and replayed (``cuda_graph: true``, GPU only).

A VLNHMM training step reads nothing back to the host (tests/test_fast_step.py), so the whole
:meth:`pipeline.training.train.Trainer.step_body` -- forward, backward, clipping, fused AdamW and the
device-side sums -- can be recorded once and replayed: one launch instead of hundreds of small ones.

* Two graphs: a stream's first window of an epoch (no carry) and every other window (the carried
  posterior); both end by copying their carry into the same static buffers, which the next replay reads.
* Inputs are copied into static buffers; the last, shorter window of an epoch is padded to ``bptt``
  (masked positions, which the model scores as padding), so the same two graphs serve a whole run.
* The first ``WARMUP`` steps run eagerly (they are real steps: Triton and TVM kernels load, the
  optimizer creates its state); capture follows.  The dropout generator is registered with the
  graphs, so replays draw fresh live states and its state stays checkpointable.
* Anything that goes wrong while capturing leaves the trainer eager and says why.

NOT YET RUN ON A GPU: the eager path is tested everywhere; the capture itself needs CUDA.
"""
from __future__ import annotations

import dataclasses

import torch

from pipeline.training.progress import say

WARMUP = 3  # eager steps before capture


def leaves(carry) -> list[torch.Tensor]:
    """The tensors of a carry (None, a tensor, a tuple/list of them, or a dataclass of them)."""
    if carry is None:
        return []
    if isinstance(carry, torch.Tensor):
        return [carry]
    if dataclasses.is_dataclass(carry):
        carry = [getattr(carry, f.name) for f in dataclasses.fields(carry)]
    return [t for part in carry for t in leaves(part)]


def copy_into(dst, src) -> None:
    """Copy a carry's tensors into another carry of the same structure, in place."""
    for d, s in zip(leaves(dst), leaves(src), strict=True):
        d.copy_(s)


def clone(carry):
    """A carry of the same structure holding copies of the tensors (static buffers)."""
    if carry is None or isinstance(carry, torch.Tensor):
        return None if carry is None else carry.clone()
    if dataclasses.is_dataclass(carry):
        return dataclasses.replace(carry, **{f.name: clone(getattr(carry, f.name)) for f in dataclasses.fields(carry)})
    return type(carry)(clone(c) for c in carry)


def pad_window(x: torch.Tensor, mask: torch.Tensor, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A window [B, t <= bptt] padded at the end to [B, bptt] (masked positions)."""
    pad = bptt - x.shape[1]
    if pad == 0:
        return x, mask
    return torch.nn.functional.pad(x, (0, pad)), torch.nn.functional.pad(mask, (0, pad), value=False)


class CapturedStep:
    """Replays ``trainer.step_body`` from CUDA graphs once they are captured (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.eager_steps = 0
        self.graphs: dict[bool, torch.cuda.CUDAGraph] | None = None
        self.failed = not getattr(trainer.model, "capturable", False)
        if self.failed:
            say(f"[{trainer.name}] cuda_graph: {type(trainer.model).__name__} steps read values back to the host; "
                "running eagerly")

    def step(self, x: torch.Tensor, mask: torch.Tensor, ntok: int, first: bool) -> bool:
        """Run one step from the graphs; False where the trainer must run it eagerly."""
        if self.failed:
            return False
        if self.graphs is None:
            self.eager_steps += 1
            if self.eager_steps <= WARMUP or first:  # capture from a window with a carry
                return False
            self._capture(x, mask)
            if self.graphs is None:
                return False
        x, mask = pad_window(x, mask, self.trainer.cfg.bptt)
        self.x.copy_(x, non_blocking=True)
        self.mask.copy_(mask, non_blocking=True)
        self.ntok.fill_(float(ntok))
        if not first:
            copy_into(self.carry, self.trainer.state["carry"])
        self.graphs[first].replay()
        self.trainer.state["carry"] = self.carry
        return True

    def _capture(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        t = self.trainer
        try:
            x, mask = pad_window(x, mask, t.cfg.bptt)
            self.x, self.mask = x.to(t.device).clone(), mask.to(t.device).clone()
            self.ntok = torch.zeros((), device=t.device)
            self.carry = clone(t.state["carry"])
            graphs = {}
            for first in (False, True):
                t.opt.zero_grad(set_to_none=True)  # each graph allocates its own gradients (its own pool)
                g = torch.cuda.CUDAGraph()
                g.register_generator_state(t.model.generator)
                with torch.cuda.graph(g):
                    carry = t.step_body(self.x, self.mask, self.ntok, None if first else self.carry, zero_grad=False)
                    copy_into(self.carry, carry)
                graphs[first] = g
            self.graphs = graphs
            say(f"[{t.name}] cuda_graph: training step captured after {WARMUP} eager steps; replaying")
        except Exception as err:  # noqa: BLE001 -- any capture failure: go on eagerly, say why
            self.failed, self.graphs = True, None
            torch.cuda.synchronize()
            say(f"[{t.name}] cuda_graph: capture failed ({type(err).__name__}: {err}); running eagerly")
