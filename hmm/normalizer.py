"""Row log-normalizers of a product of two embedding sets, by column tiles.

    log_z = row_logsumexp(p, q)      # p [R, h], q [C, h] -> log_z [R]
    log_z[i] = logsumexp_j (p[i] . q[j])

The [R, C] logits are never held: the forward pass folds column tiles of width ``tile`` into
a running logsumexp, and the backward pass recomputes each tile, so the extra memory is
O(R * tile) instead of O(R * C).  With g = dL/dlog_z and the softmax weights
w[i, j] = exp(p[i] . q[j] - log_z[i]):

    dL/dp[i] = g[i] sum_j w[i, j] q[j]          dL/dq[j] = sum_i g[i] w[i, j] p[i]

Under CUDA autocast the tile products run in the autocast dtype and every reduction in the
inputs' dtype; the backward pass replays the forward's autocast state.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

TILE = 1024


class _RowLogSumExp(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, p: torch.Tensor, q: torch.Tensor, tile: int) -> torch.Tensor:
        log_z = torch.full((len(p),), -torch.inf, dtype=p.dtype, device=p.device)
        for start in range(0, len(q), tile):
            logits = (p @ q[start:start + tile].T).to(p.dtype)          # [R, tile]
            log_z = torch.logaddexp(log_z, logits.logsumexp(dim=1))
        ctx.tile = tile
        ctx.save_for_backward(p, q, log_z)
        return log_z

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor):
        p, q, log_z = ctx.saved_tensors
        grad_p, grad_q = torch.zeros_like(p), torch.empty_like(q)
        for start in range(0, len(q), ctx.tile):
            q_tile = q[start:start + ctx.tile]
            w = (p @ q_tile.T).to(p.dtype).sub_(log_z[:, None]).exp_().mul_(grad[:, None])   # [R, tile]
            grad_p.addmm_(w, q_tile)
            grad_q[start:start + ctx.tile] = w.T @ p
        return grad_p, grad_q, None


def row_logsumexp(p: torch.Tensor, q: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """p [R, h], q [C, h] -> [R] logsumexp_j (p[i] . q[j]), differentiable in p and q.

    ``tile``: columns per tile (default: the module's ``TILE``, read at call time).
    """
    tile = TILE if tile is None else tile
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    return _RowLogSumExp.apply(p, q, tile)
