"""The output layer and its loss in one step: log p(target) under softmax(h W^T + b), never [N, V] in fp32.

    logp = token_logp(h, weight, bias, target, dtype)     # h [N, d], weight [V, d], bias [V] | None -> [N]

``dtype`` is the matrix products' operand format: None, the weights' own (exact: the same numbers as
``log_softmax(h @ W.T + b).gather(target)``) or ``torch.bfloat16`` (training on a CPU with native
bf16, :mod:`pipeline.training.precision`): the logits come out of one bf16 product (fp32 accumulation,
rounded to bf16 as autocast rounds them), and each row's softmax and log-normalizer are computed in
fp32 (chunks of ``CHUNK`` rows that stay in cache; log Z = max logit - log max softmax, exact to fp32
rounding since max softmax >= 1 / V), as are the target's log-probability and the bias gradient.
The softmax minus the target's one-hot is kept in the logits' buffer (bf16) for the backward pass,
whose products with W and h are bf16 again; the gradient's row scale (-g) is applied to the small
factors (h, and the [N, d] product), so the backward pass never sweeps the [N, V] buffer.

Why by hand: ``F.cross_entropy`` on bf16 logits runs its log_softmax in bf16 under CPU autocast
(torch 2.13 keeps bf16 through log_softmax, logsumexp and layer_norm) and otherwise materializes
the [N, V] fp32 log-probabilities; here the one [N, V] buffer holds the logits, then softmax - onehot.
Backward may run once (``once_differentiable``).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK = 64  # rows per fp32 pass on a CPU: 64 x 10,000 x 4 bytes = 2.5 MB, in its cache


def _chunks(n: int, device: torch.device):
    """Row slices of the fp32 passes: ``CHUNK`` rows on a CPU; all rows at once on a GPU, where each chunk
    would cost a handful of kernel launches (the FF's 8,192 rows: ~1,000) and memory is not the limit."""
    size = CHUNK if device.type == "cpu" else max(n, 1)
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class _TokenLogp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target, dtype):
        acc = torch.promote_types(weight.dtype, torch.float32)                # fp32 (fp64 for fp64 weights)
        dtype = dtype or weight.dtype
        hc, wc = h.to(dtype), weight.to(dtype)
        logits = hc @ wc.T                                                   # [N, V] in dtype
        picked = logits.gather(1, target[:, None])[:, 0].to(acc)
        if bias is not None:
            picked += bias[target]
        lse = torch.empty(len(h), dtype=acc, device=h.device)
        keep = any(ctx.needs_input_grad[:3])
        for rows in _chunks(len(h), h.device):   # log-normalizer and softmax of each row, in fp32
            chunk = logits[rows].to(acc)
            if bias is not None:
                chunk = chunk + bias
            top = chunk.amax(dim=1)
            p = torch.softmax(chunk, dim=1)                                  # one fused pass
            lse[rows] = top - p.amax(dim=1).log()                            # max p = exp(top - lse) >= 1 / V
            if keep:   # the buffer now holds softmax - onehot(target): the logits' gradient up to -g per row
                p[torch.arange(len(p), device=p.device), target[rows]] -= 1
                logits[rows] = p
        if keep:
            ctx.save_for_backward(hc, wc, bias, target, logits)
            ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return picked - lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        # d logits = g (onehot - softmax) = -g q, q = softmax - onehot (kept by forward): the row scale -g goes
        # onto the small factors of the products, so no pass over the [N, V] buffer is needed here
        hc, wc, bias, target, q = ctx.saved_tensors
        scale = -grad.to(torch.promote_types(grad.dtype, torch.float32))[:, None]                # [N, 1]
        dh = ((q @ wc) * scale).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        dw = (q.T @ (hc * scale).to(q.dtype)).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        # [1, N] x [N, V] (a GEMM over q's rows: 5x faster on a CPU than the matrix-vector q^T s)
        dbias = (scale.T.to(q.dtype) @ q)[0].to(bias.dtype) if ctx.needs_input_grad[2] else None
        return dh, dw, dbias, None, None


def token_logp(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """h [N, d], weight [V, d], bias [V] or None, target [N] int64 -> log p(target) [N] (fp32, or fp64 for
    fp64 weights); ``dtype``: the products' operand format (None: the weights' own)."""
    return _TokenLogp.apply(h, weight, bias, target, dtype)
