"""The scans of :mod:`hmm.inference` as matrix products in probability space: the fast backend on CPU.

Same semantics and shapes as the reference (block form: ``init [B, n]``, ``table [U, n, n]``,
``index [B, S]`` with -1 = padding, ``emit [B, S, n]``); every log-sum-exp over a block becomes a
matrix product between max-shifted exponentials:

    alpha[t+1, j] = log sum_u exp(alpha[t, u] - a) exp(table[g, u, j] - c_j) + a + c_j + emit[t, j]

with ``a`` the message's largest entry and ``c_j`` the largest entry of column j of block g (rows
for the backward scan), so every exponential is at most 1 and the products run as GEMMs (one
``[B, n] @ [n, n]`` product per step for the block most rows read, plus a batched one for the rows
reading others; with more blocks than rows, one batched product over the rows' own blocks).  The
exponentiated blocks are computed once per window, not once per step.  The gradient of the
transition blocks is the same sum of pair marginals as :func:`hmm.inference._grad_table`, as one
``[n, edges] @ [edges, n]`` product per block.

Where it differs from the log-space reference: float32 exponentials flush terms smaller than
~e^-87 of the step's largest to zero.  A state whose message is that far below the row's best
(or a gradient term that far below an edge's posterior mass) becomes -inf (0) where the reference
keeps a finite, negligible value; a row whose whole message would underflow is recomputed in log
space, so a log-likelihood is never lost that way.  NaN and -inf potentials behave as in the
reference.  Tested against it in ``tests/test_kernels.py`` like every backend.

The backend (:class:`MatmulScan`) uses the products for blocks of at least ``MIN_STATES`` live states and
the reference's log-space steps for smaller ones, where products do not pay.

Made for the CPU: it reads values back to the host (each step's underflow check, the number of edges per
block), which costs a synchronisation each on a GPU and rules out CUDA-graph capture (``capturable``).
"""
from __future__ import annotations

import torch

from hmm import inference
from hmm.inference import finite_or_zero

# Blocks of fewer live states than this are scanned by the log-space reference: a [B, n] x [n, n] product that
# small does not repay its exponentials and bookkeeping (bench.cpu_scans on a Zen 4, 1 thread: at n = 16 / 32,
# 4,096 states and M = 128, the training step 394 -> 440 ms and evaluation 65 -> 76 ms with products; even at
# n = 64 / 128, M = 8: 0.98x / 1.12x; from n = 128 / 256 on they win, 1.33x / 2.4x, and 4.2x / 22x at 512 / 1,024).
MIN_STATES = 64


def _scan(start, table, probs, shift, index, emit, reverse: bool) -> torch.Tensor:
    """The forward (``reverse`` False) or backward scan.  ``probs [U, n, n]`` = exp(table - shift)
    oriented so that the next message is ``log(p @ probs[g]) + shift[g]`` (+ emit, forward) for
    ``p`` the exponentiated message (forward) or emission-plus-message (backward)."""
    B, S, n = emit.shape
    U = probs.shape[0]
    blocks = index.long().clamp(min=0)
    live = index >= 0
    few_blocks = U <= B   # rows mostly share blocks: see _shared_block
    plan = _shared_block(index) if few_blocks else None
    msg, out = start, [start]
    for t in (range(S - 1, -1, -1) if reverse else range(S)):
        g = blocks[:, t]
        src = emit[:, t] + msg if reverse else msg
        top = finite_or_zero(src.amax(dim=-1, keepdim=True))
        p = (src - top).exp()
        if few_blocks:
            shared, others = plan[t]
            summed = p @ probs[shared]                                  # [B, n], right for most rows
            for block, rows in others:                                  # the rows of each other block
                summed[rows] = p[rows] @ probs[block]
        else:
            summed = torch.bmm(p.unsqueeze(1), probs[g]).squeeze(1)     # [B, n]
        new = summed.log() + top + shift[g]
        if not reverse:
            new = new + emit[:, t]
        lost = live[:, t] & torch.isneginf(new).all(dim=-1) & (p > 0).any(dim=-1)
        if lost.any():  # the whole row underflowed (or truly died): its step in log space
            new[lost] = _log_space_step(msg[lost], table[g[lost]], emit[lost, t], reverse)
        msg = torch.where(live[:, t, None], new, msg)
        out.append(msg)
    return torch.stack(out[::-1] if reverse else out, dim=1)


def _shared_block(index: torch.Tensor) -> list[tuple[int, list[tuple[int, torch.Tensor]]]]:
    """Per step: the block most live rows read, and each other block read with its live rows, from one host
    read of ``index`` [B, S] (padding rows take the shared product; their message is kept as it was).  With
    few blocks (dense with ``<eos>`` resets: the transition, and the start block for the rows just past an
    ``<eos>``) one product for all rows and a small one per other block do the step's work once, where every
    block's product for every row did it U times, and no [rows, n, n] copy of blocks is gathered."""
    plan = []
    for column in index.T.tolist():
        rows_of: dict[int, list[int]] = {}
        for b, block in enumerate(column):
            if block >= 0:
                rows_of.setdefault(block, []).append(b)
        shared = max(rows_of, key=lambda block: len(rows_of[block])) if rows_of else 0
        others = [(block, torch.tensor(rows, device=index.device))
                  for block, rows in rows_of.items() if block != shared]
        plan.append((shared, others))
    return plan


def _log_space_step(msg, blocks, emit_t, reverse: bool) -> torch.Tensor:
    """One step of the reference scans for a few rows: blocks [r, n, n]."""
    if reverse:
        return torch.logsumexp(blocks + (emit_t + msg).unsqueeze(-2), dim=-1)
    return torch.logsumexp(msg.unsqueeze(-1) + blocks, dim=-2) + emit_t


def _usable(table: torch.Tensor) -> torch.Tensor:
    """A table with at least one block (every step is padding when U = 0)."""
    return table if table.shape[0] else table.new_zeros(1, table.shape[1], table.shape[2])


def scan_forward(init, table, index, emit) -> torch.Tensor:
    """alpha [B, S+1, n], as :func:`hmm.inference.scan_forward_blocks`."""
    table = _usable(table)
    top = finite_or_zero(table.amax(dim=1))                              # [U, n]: per destination
    probs = (table - top.unsqueeze(1)).exp()
    return _scan(init, table, probs, top, index, emit, reverse=False)


def scan_backward(table, index, emit) -> torch.Tensor:
    """beta [B, S+1, n], as :func:`hmm.inference.scan_backward_blocks`."""
    table = _usable(table)
    top = finite_or_zero(table.amax(dim=2))                              # [U, n]: per source
    probs = (table - top.unsqueeze(2)).exp().transpose(1, 2).contiguous()
    B, _, n = emit.shape
    return _scan(emit.new_zeros(B, n), table, probs, top, index, emit, reverse=True)


def grad_table(alpha, beta, table, index, emit, log_z, grad_log_z) -> torch.Tensor:
    """d/d table [U, n, n], as :func:`hmm.inference._grad_table`: per block g, the sum over the edges
    using it of grad_log_z[b] * exp(before[u] + table[g, u, j] + after[j]) with before = alpha - log Z
    and after = emit + beta, computed as exp(table[g] - max) * (L_g^T @ R_g), where the rows of L and R
    are the edges' exponentiated ``before`` and ``after`` (shifted by the largest ``after``), one product per
    block in use.  Falls back to the reference where the result is not finite (a NaN potential, or an
    overflow)."""
    B, S, n = emit.shape
    U = table.shape[0]
    grad = torch.zeros_like(table)
    if U == 0 or B * S == 0:
        return grad
    flat = index.reshape(-1).long()
    weight = torch.where(flat >= 0, grad_log_z[:, None].expand(B, S).reshape(-1), 0.0)
    used = (weight != 0)[:, None]
    before = torch.where(torch.isneginf(log_z)[:, None, None], -torch.inf,
                         alpha[:, :-1] - log_z[:, None, None]).reshape(-1, n)
    after = (emit + beta[:, 1:]).reshape(-1, n)
    g = flat.clamp(min=0)
    top = finite_or_zero(table.amax(dim=(1, 2)))                         # [U]
    shift = finite_or_zero(after.amax(dim=-1, keepdim=True))             # [edges, 1]
    left = torch.where(used, (before + shift + top[g, None]).exp() * weight[:, None], 0.0)
    right = torch.where(used, (after - shift).exp(), 0.0)
    order = torch.argsort(g, stable=True)
    blocks, counts = torch.unique(g, return_counts=True)
    sizes = counts.tolist()
    for block, lhs, rhs in zip(blocks.tolist(), left[order].split(sizes), right[order].split(sizes)):
        torch.matmul(lhs.T, rhs, out=grad[block])
    grad.mul_((table - top[:, None, None]).exp())
    if not torch.isfinite(grad).all():
        return inference._grad_table(alpha, beta, table, index, emit, log_z, grad_log_z)
    return grad


class MatmulScan:
    """Backend ``matmul``: the scans and the transition gradient as matrix products (any device), for blocks of
    at least ``min_states`` live states; smaller ones by the log-space reference (see ``MIN_STATES``)."""

    name = "matmul"
    capturable = False  # host reads (each step's underflow check, the edges per block): no CUDA graph capture

    def __init__(self, min_states: int = MIN_STATES):
        self.min_states = min_states

    def _products(self, table: torch.Tensor) -> bool:
        return table.shape[-1] >= self.min_states

    def forward(self, init, table, index, emit):
        return (scan_forward if self._products(table) else inference.scan_forward_blocks)(init, table, index, emit)

    def backward(self, table, index, emit):
        return (scan_backward if self._products(table) else inference.scan_backward_blocks)(table, index, emit)

    def grad_table(self, alpha, beta, table, index, emit, log_z, grad_log_z):
        fn = grad_table if self._products(table) else inference._grad_table
        return fn(alpha, beta, table, index, emit, log_z, grad_log_z)
