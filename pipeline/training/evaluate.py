"""Scoring a split: perplexity of a stream of tokens, and (for intervals) the score of every token."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from pipeline.data.corpus import Windows
from pipeline.training.timing import synchronize


def perplexity(nll: float) -> float:
    """exp(nll): inf where that overflows a float, NaN for a NaN."""
    return math.exp(nll) if nll < 709.0 or math.isnan(nll) else math.inf


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, batch_size: int, bptt: int, device,
             per_token: bool = False) -> tuple[float, float] | tuple[float, float, np.ndarray]:
    """(perplexity, ms per batch with cached parameters) of ``ids`` scored as ``batch_size`` streams with carry.

    ``per_token``: also the log-probability of every token of ``ids`` (float64 [n], in order), each
    conditioned as the streams condition it; the perplexity is then the one of these scores.
    The perplexity is inf where it overflows and NaN where a score is NaN; callers decide."""
    model.eval()
    windows = Windows(ids, batch_size, bptt)
    total, carry = torch.zeros((), dtype=torch.float64, device=device), model.initial_state(windows.batch_size)
    if per_token:  # where each stream position sits in ids (padding: one extra slot, dropped at the end)
        position = torch.full(windows.x.shape, windows.num_tokens, dtype=torch.long)
        position[windows.mask] = torch.arange(windows.num_tokens)
        token_logp = torch.zeros(windows.num_tokens + 1, dtype=torch.float64, device=device)
    if hasattr(model, "prepare_evaluation"):  # one-off work (the VLNHMM's cached parameters) is not timed
        model.prepare_evaluation()
    synchronize(device)
    start = time.perf_counter()
    for w, (x, mask) in enumerate(windows):
        if per_token:
            logp, carry = model(x.to(device), mask.to(device), carry, per_token=True)
            where = position[:, w * bptt: w * bptt + x.shape[1]].to(device)
            token_logp.index_copy_(0, where.flatten(), logp.double().flatten())
        else:
            logp, carry = model(x.to(device), mask.to(device), carry)
            total += logp.sum(dtype=torch.float64)
    synchronize(device)
    ms = 1000 * (time.perf_counter() - start) / len(windows)
    model.train()
    if per_token:
        token_logp = token_logp[:-1].cpu().numpy()
        return perplexity(-float(token_logp.sum()) / windows.num_tokens), ms, token_logp
    return perplexity(-float(total) / windows.num_tokens), ms
