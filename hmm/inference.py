"""Exact inference for HMMs whose live states are gathered per step, in log space.

This module is the reference that every faster backend (TVM kernels, fused paths) is
tested against.  Shapes: ``B`` streams, ``T`` steps, ``n`` live states per step
(``n = k`` states of the word's block, or ``k' = (1 - dropout) k`` in training).

The potentials of one window are

    init  [B, n]          log p(z_1 = j) + log p(x_1 | z_1 = j)
    edges [B, T-1, n, n]  log p(z_{t+1} = j | z_t = u) + log p(x_{t+1} | z_{t+1} = j)

Positions after a row's last token are padding: their edge is the log-identity
(0 on the diagonal, -inf elsewhere), so alpha is carried unchanged to column T-1 and
``logsumexp(alpha[:, -1])`` is the row's log-likelihood.  A row with no token at all
has no meaningful score; callers mask it.
"""
from __future__ import annotations

import torch


def scan_forward(init: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Forward messages. init [B, n], edges [B, S, n, n] -> alpha [B, S+1, n].

    alpha[:, 0] = init;  alpha[:, t+1, j] = logsumexp_u(alpha[:, t, u] + edges[:, t, u, j]).
    """
    alphas = [init]
    for t in range(edges.shape[1]):
        alphas.append(torch.logsumexp(alphas[-1].unsqueeze(-1) + edges[:, t], dim=-2))
    return torch.stack(alphas, dim=1)


def scan_backward(edges: torch.Tensor) -> torch.Tensor:
    """Backward messages. edges [B, S, n, n] -> beta [B, S+1, n].

    beta[:, S] = 0;  beta[:, t, u] = logsumexp_j(edges[:, t, u, j] + beta[:, t+1, j]).
    """
    B, S, n, _ = edges.shape
    beta = edges.new_zeros(B, n)
    betas = [beta]
    for t in range(S - 1, -1, -1):
        beta = torch.logsumexp(edges[:, t] + beta.unsqueeze(-2), dim=-1)
        betas.append(beta)
    return torch.stack(betas[::-1], dim=1)


class TorchScan:
    """The reference backend: plain PyTorch, any device."""

    name = "torch"
    forward = staticmethod(scan_forward)
    backward = staticmethod(scan_backward)


def log_partition_autograd(init: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """log Z [B] by the forward algorithm, differentiated by autograd (the reference gradient)."""
    return torch.logsumexp(scan_forward(init, edges)[:, -1], dim=-1)


def _safe_exp(x: torch.Tensor) -> torch.Tensor:
    # exp(-inf - (-inf)) would be exp(nan); impossible entries get probability 0.
    return torch.exp(torch.nan_to_num(x, nan=-torch.inf))


class _LogPartition(torch.autograd.Function):
    """log Z with the gradient given by posterior marginals (expected counts).

    d log Z / d init[j]       = p(z_1 = j | x)
    d log Z / d edges[t,u,j]  = p(z_{t+1} = u, z_{t+2} = j | x)
    so the backward pass needs only a backward scan, never a graph through the forward.
    """

    @staticmethod
    def forward(ctx, init, edges, scan):
        alpha = scan.forward(init.contiguous(), edges.contiguous())
        log_z = torch.logsumexp(alpha[:, -1], dim=-1)
        ctx.scan = scan
        ctx.save_for_backward(alpha, edges, log_z)
        return log_z, alpha[:, -1]

    @staticmethod
    def backward(ctx, grad_log_z, _grad_last):
        alpha, edges, log_z = ctx.saved_tensors
        beta = ctx.scan.backward(edges.contiguous())
        g = grad_log_z[:, None, None, None]
        shift = log_z[:, None, None, None]
        grad_edges = g * _safe_exp(alpha[:, :-1, :, None] + edges + beta[:, 1:, None, :] - shift)
        grad_init = grad_log_z[:, None] * _safe_exp(alpha[:, 0] + beta[:, 0] - log_z[:, None])
        return grad_init, grad_edges, None


def log_partition(init: torch.Tensor, edges: torch.Tensor, scan=TorchScan) -> tuple[torch.Tensor, torch.Tensor]:
    """(log Z [B], alpha at the last column [B, n]); gradient by marginals via ``scan``.

    ``scan`` is any backend with ``forward(init, edges)`` and ``backward(edges)`` as defined
    by :func:`scan_forward` and :func:`scan_backward`.  The returned alpha is for carrying
    the filtered posterior into the next window and gets no gradient.
    """
    log_z, last = _LogPartition.apply(init, edges, scan)
    return log_z, last.detach()


def marginals(init: torch.Tensor, edges: torch.Tensor, scan=TorchScan) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior unary [B, T, n] and edge [B, T-1, n, n] marginals (for inspection and tests)."""
    alpha = scan.forward(init, edges)
    beta = scan.backward(edges)
    log_z = torch.logsumexp(alpha[:, -1], dim=-1)
    unary = _safe_exp(alpha + beta - log_z[:, None, None])
    pair = _safe_exp(alpha[:, :-1, :, None] + edges + beta[:, 1:, None, :] - log_z[:, None, None, None])
    return unary, pair
