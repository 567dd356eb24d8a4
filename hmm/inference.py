"""Exact inference for HMMs whose live states are gathered per step, in log space.

This module is the reference that every faster backend (TVM kernels, fused paths) is
tested against.  Shapes: ``B`` streams, ``S = T - 1`` edges of a window of ``T`` tokens,
``n`` live states per step (``n = k`` states of the word's block, or ``k' = (1 - dropout) k``
in training), ``U`` transition blocks.

Block form (what the scans read): the potentials of one window are

    init  [B, n]        log p(z_1 = j) + log p(x_1 | z_1 = j)
    table [U, n, n]     log transition blocks: table[g, u, j] = log p(z_{t+1} = j | z_t = u)
    index [B, S] int    which block edge t uses; -1 = padding
    emit  [B, S, n]     log p(x_{t+1} | z_{t+1} = j), the emission of token t+1 for edge t

and imply the edges

    edges[b, t, u, j] = table[index[b, t], u, j] + emit[b, t, j]      (index >= 0)
                      = 0 if u == j else -inf                           (index == -1)

Positions after a row's last token are padding (index -1): the log-identity edge carries
alpha unchanged to the last column and the emission is ignored, so
``logsumexp(alpha[:, -1])`` is the row's log-likelihood.  The scans carry the message by copy,
which equals the log-identity edge except that a NaN stays in its state instead of spreading
to all (NaN + -inf is NaN); every output a NaN reaches is NaN either way.  A row with no token at all has no
meaningful score; callers mask it.  Edges are never materialised by the scans; only the
inspection helpers (:func:`block_edges`, :func:`marginals_blocks`) and the autograd
reference build them one step at a time or in full.

The edge form (``init [B, n]`` and explicit ``edges [B, S, n, n]``: :func:`scan_forward`,
:func:`scan_backward`) is the plainest statement of the recurrences, kept for tests.

NaN in any potential gives NaN in every output it reaches (torch.logsumexp propagates NaN),
so a non-finite-loss check fires; -inf entries are ordinary (probability 0).
"""
from __future__ import annotations

import torch
from torch.profiler import record_function

GRAD_CHUNK_ELEMENTS = 2**24   # at most this many floats of [edges, n, n] terms at a time (64 MiB)


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """A shift for exponentiating in a max-shifted sum: ``x`` where finite, else 0 (a max that is -inf, where
    nothing is alive, then gives -inf, and +inf or NaN carries through, as logsumexp does)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def log_identity(n: int, like: torch.Tensor) -> torch.Tensor:
    """[n, n]: 0 on the diagonal, -inf elsewhere (dtype and device of ``like``)."""
    return torch.full((n, n), -torch.inf, dtype=like.dtype, device=like.device).fill_diagonal_(0.0)


def step_edges(table: torch.Tensor, index_t: torch.Tensor, emit_t: torch.Tensor) -> torch.Tensor:
    """The implied edges of one step. table [U, n, n], index_t [B], emit_t [B, n] -> [B, n, n]."""
    n = table.shape[-1]
    if table.shape[0] == 0:  # every step is padding
        return log_identity(n, emit_t).expand(len(index_t), n, n)
    edge = table[index_t.clamp(min=0).long()] + emit_t[:, None, :]
    return torch.where((index_t >= 0)[:, None, None], edge, log_identity(n, emit_t))


def block_edges(table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
    """All implied edges [B, S, n, n] (for tests and inspection; the scans never build them)."""
    B, S, n = emit.shape
    steps = [step_edges(table, index[:, t], emit[:, t]) for t in range(S)]
    return torch.stack(steps, dim=1) if steps else emit.new_zeros(B, 0, n, n)


# ------------------------------------------------------------------------------ edge form


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


# ----------------------------------------------------------------------------- block form


def _step_blocks(table: torch.Tensor, index_t: torch.Tensor) -> torch.Tensor:
    """[B, n, n]: each row's block of this step, a block of zeros at padding (index -1), so a padding row
    computes a finite, discarded step: no NaN and no gradient leaks from it into autograd.  Gathers only
    the B blocks in use (never a padded copy of the whole table: 16 GiB at 2^16 states' evaluation)."""
    n = table.shape[-1]
    if table.shape[0] == 0:  # every step is padding
        return table.new_zeros(len(index_t), n, n)
    blocks = table[index_t.clamp(min=0).long()]
    return torch.where((index_t < 0)[:, None, None], 0.0, blocks)


def scan_forward_blocks(init: torch.Tensor, table: torch.Tensor, index: torch.Tensor,
                        emit: torch.Tensor) -> torch.Tensor:
    """Forward messages on the implied edges, one [B, n, n] block gather per step; padding copies.

    init [B, n], table [U, n, n], index [B, S], emit [B, S, n] -> alpha [B, S+1, n];
    alpha[:, t+1, j] = logsumexp_u(alpha[:, t, u] + table[index[:, t], u, j]) + emit[:, t, j].
    """
    alphas = [init]
    for t in range(index.shape[1]):
        step = torch.logsumexp(alphas[-1].unsqueeze(-1) + _step_blocks(table, index[:, t]), dim=-2) + emit[:, t]
        alphas.append(torch.where((index[:, t] >= 0)[:, None], step, alphas[-1]))
    return torch.stack(alphas, dim=1)


def scan_backward_blocks(table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
    """Backward messages on the implied edges; padding copies. table [U, n, n], index [B, S],
    emit [B, S, n] -> beta [B, S+1, n];
    beta[:, t, u] = logsumexp_j(table[index[:, t], u, j] + emit[:, t, j] + beta[:, t+1, j])."""
    B, S, n = emit.shape
    beta = emit.new_zeros(B, n)
    betas = [beta]
    for t in range(S - 1, -1, -1):
        step = torch.logsumexp(_step_blocks(table, index[:, t]) + (emit[:, t] + beta).unsqueeze(-2), dim=-1)
        beta = torch.where((index[:, t] >= 0)[:, None], step, beta)
        betas.append(beta)
    return torch.stack(betas[::-1], dim=1)


class TorchScan:
    """The reference backend: plain PyTorch, any device (block form)."""

    name = "torch"
    forward = staticmethod(scan_forward_blocks)
    backward = staticmethod(scan_backward_blocks)


def _posterior(log_joint: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """exp(log_joint - log Z) with log_z broadcast from the front; 0 for rows with log Z = -inf
    (an impossible window has no posterior; -inf - -inf would give NaN).  NaN stays NaN."""
    log_z = log_z.reshape(log_z.shape + (1,) * (log_joint.dim() - log_z.dim()))
    return torch.exp(log_joint - log_z).masked_fill(torch.isneginf(log_z), 0.0)


def _grad_table(alpha, beta, table, index, emit, log_z, grad_log_z) -> torch.Tensor:
    """d/d table [U, n, n]: for every non-padding edge (b, t) with g = index[b, t], add
    grad_log_z[b] * exp((alpha[b, t, u] - log Z[b]) + table[g, u, j] + (emit[b, t, j] + beta[b, t+1, j])),
    in chunks of GRAD_CHUNK_ELEMENTS floats of terms (one [chunk, n, n] buffer, updated in place)."""
    B, S, n = emit.shape
    grad = torch.zeros_like(table)
    flat = index.reshape(-1).long()
    chunk = max(1, GRAD_CHUNK_ELEMENTS // (n * n))
    # log Z = -inf (impossible window): no posterior, the row contributes 0 (not -inf - -inf).
    before = torch.where(torch.isneginf(log_z)[:, None, None], -torch.inf, alpha[:, :-1] - log_z[:, None, None])
    after = emit + beta[:, 1:]                                          # [B, S, n]
    # every edge position, padding included with weight 0: no data-dependent shapes (no host sync)
    weight = torch.where(flat >= 0, grad_log_z[:, None].expand(B, S).reshape(-1), 0.0)
    for pos in torch.arange(B * S, device=index.device).split(chunk):
        b, t, g = pos // S, pos % S, flat[pos].clamp(min=0)
        terms = table.index_select(0, g)
        terms.add_(before[b, t, :, None]).add_(after[b, t, None, :]).exp_()
        terms = torch.where(weight[pos, None, None] != 0, terms * weight[pos, None, None], 0.0)
        grad.index_add_(0, g, terms)
    return grad


class _LogPartitionBlocks(torch.autograd.Function):
    """log Z with the gradient given by posterior marginals (expected counts).

    d log Z / d init[j]        = p(z_1 = j | x)
    d log Z / d emit[t, j]     = p(z_{t+2} = j | x)                         (0 at padding)
    d log Z / d table[g, u, j] = sum over edges t using block g of p(z_{t+1} = u, z_{t+2} = j | x)
    so the backward pass needs only a backward scan, never a graph through the forward.
    """

    @staticmethod
    def forward(ctx, init, table, index, emit, scan):
        with record_function("hmm.scan.forward"):
            alpha = scan.forward(init, table, index, emit)
        log_z = torch.logsumexp(alpha[:, -1], dim=-1)
        ctx.scan = scan
        ctx.save_for_backward(alpha, table, index, emit, log_z)
        return log_z, alpha[:, -1]

    @staticmethod
    def backward(ctx, grad_log_z, _grad_last):
        with record_function("hmm.scan.backward"):
            return _LogPartitionBlocks._grads(ctx, grad_log_z)

    @staticmethod
    def _grads(ctx, grad_log_z):
        alpha, table, index, emit, log_z = ctx.saved_tensors
        beta = ctx.scan.backward(table, index, emit)
        grad_init = grad_emit = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_init = grad_log_z[:, None] * _posterior(alpha[:, 0] + beta[:, 0], log_z)
        if ctx.needs_input_grad[3]:
            unary = _posterior(alpha[:, 1:] + beta[:, 1:], log_z)
            grad_emit = (grad_log_z[:, None, None] * unary).masked_fill((index < 0)[..., None], 0.0)
        if ctx.needs_input_grad[1]:  # a backend may bring its own (hmm.matmul_scan)
            grad_fn = getattr(ctx.scan, "grad_table", _grad_table)
            grad_table = grad_fn(alpha, beta, table, index, emit, log_z, grad_log_z)
        return grad_init, grad_table, None, grad_emit, None


def log_partition_blocks(init: torch.Tensor, table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor,
                         scan=TorchScan) -> tuple[torch.Tensor, torch.Tensor]:
    """(log Z [B], alpha at the last column [B, n]); gradient by marginals via ``scan``.

    init [B, n], table [U, n, n], index [B, S] (int32 or int64, -1 = padding), emit [B, S, n].
    ``scan`` is any backend with ``forward(init, table, index, emit)`` and
    ``backward(table, index, emit)`` as defined by :func:`scan_forward_blocks` and
    :func:`scan_backward_blocks`, and optionally ``grad_table`` as :func:`_grad_table`.  The returned
    alpha is for carrying the filtered posterior into the next window and gets no gradient.
    """
    index = index.to(torch.int32)  # once, for both scans
    log_z, last = _LogPartitionBlocks.apply(init.contiguous(), table.contiguous(), index.contiguous(),
                                            emit.contiguous(), scan)
    return log_z, last.detach()


def log_partition_blocks_autograd(init: torch.Tensor, table: torch.Tensor, index: torch.Tensor,
                                  emit: torch.Tensor) -> torch.Tensor:
    """log Z [B] by the forward algorithm, differentiated by autograd (the reference gradient)."""
    return torch.logsumexp(scan_forward_blocks(init, table, index, emit)[:, -1], dim=-1)


def marginals_blocks(init: torch.Tensor, table: torch.Tensor, index: torch.Tensor, emit: torch.Tensor,
                     scan=TorchScan) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior unary [B, S+1, n] and edge [B, S, n, n] marginals on the implied edges (for
    inspection and tests; builds all edges)."""
    alpha = scan.forward(init, table, index, emit)
    beta = scan.backward(table, index, emit)
    log_z = torch.logsumexp(alpha[:, -1], dim=-1)
    edges = block_edges(table, index, emit)
    pair = _posterior(alpha[:, :-1, :, None] + edges + beta[:, 1:, None, :], log_z)
    return _posterior(alpha + beta, log_z), pair
