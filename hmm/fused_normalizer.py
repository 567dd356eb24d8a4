"""Fused row log-normalizer of the factored transition in Triton (flash-attention style).

    log_z = row_logsumexp(p, q, precision)   # P [R, h], Q [C, h] -> log Z [R] (float32)
    log Z_u = logsumexp_j P_u . Q_j

Forward: one program per tile of ``block_r`` rows holds P's tile [block_r, h] on chip and walks
the column tiles Q [block_c, h]; each logits tile P Q^T [block_r, block_c] (float32) is folded
into an online row max m and sum s, and log Z = m + log s.  No logits reach global memory.

Backward, recomputing the tiles, deterministic and without atomics.  With g = dL/dlog Z and
w[u, j] = g_u exp(P_u . Q_j - log Z_u):

    grad P = w Q      one program per row tile, looping over the column tiles
    grad Q = w^T P    one program per column tile, looping over the row tiles

so each backward kernel recomputes its logits tiles (2 recomputes + 2 gradient products, against
1 product forward).  The full hidden width is one tile (``_width(h)``, the next power of two, at
least 16, zero-padded): designed for h <= 256.

Operands (see :mod:`hmm.normalizer` for the precision contract): P and Q are rounded by
``round_operand(x, precision)`` on the host and the kernels multiply them as "fp32" (IEEE FMA),
"tf32" (TF32 tensor cores, exact on pre-rounded operands) or "bf16" (bfloat16 tensors);
products accumulate in float32.  The gradient products w Q and w^T P use the same format
(w, float32, is cast to bfloat16 under "bf16" and rounded to TF32 by the tensor cores under
"tf32"), so their gradients carry that format's rounding.

CPU: with ``TRITON_INTERPRET=1`` set before this module (and triton) is first imported, the
kernels run on CPU tensors in Triton's interpreter (slow; for tests).  Triton 3.6's interpreter
multiplies bfloat16 dot operands as raw 16-bit integers, so under it they are upcast to float32
first (exact); it also rounds float32 -> bfloat16 toward zero (w only, in the backward).

Benchmark: ``python -m bench.normalizer --R 16384 --C 16384 --h 256 --precision bf16``
times the torch tiles against the kernels (forward, forward + backward) and prints CSV rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from torch.profiler import record_function

from hmm.precision import check_precision, round_operand

INTERPRETED = bool(triton.knobs.runtime.interpret)  # fixed when the kernels below are decorated
# precision -> (block_r, block_c) of the forward kernel and of the two backward kernels.  At
# h = 256 these compile for sm_90 without register spills and within 227 KiB of shared memory
# (tests/test_normalizer.py checks with ptxas); not timed: no GPU was at hand.  The fp32 (IEEE,
# FMA) gradient kernels spill from 32 x 32 tiles on.
TILES = {"fp32": ((32, 32), (16, 16)), "tf32": ((64, 64), (64, 64)), "bf16": ((64, 64), (64, 64))}
DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "ieee"}   # tl.dot input_precision


def _patch_interpreter_index() -> None:
    """Interpreter only: loops over a runtime bound (``range(0, C, BLOCK_C)``) call int() on a
    1-element array, which numpy >= 2.4 refuses (triton-lang/triton#9171, fixed upstream after
    3.6.0 by #9172).  Applies that fix: while the interpreter patches tl.tensor for a kernel run,
    __index__ takes the array's single element."""
    from triton.runtime import interpreter
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "index_fixed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor.index_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if INTERPRETED:
    _patch_interpreter_index()


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------

@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b, accumulated in float32; UPCAST: bfloat16 operands to float32 first (interpreter)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT)


@triton.jit
def _load_tile(X, start, n, H, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows [start, start + BLOCK) of X [n, H] (row-major) -> [BLOCK, BLOCK_H], zero outside."""
    rows = start + tl.arange(0, BLOCK)
    hs = tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < n) & (hs[None, :] < H)
    return tl.load(X + rows[:, None] * H + hs[None, :], mask=mask, other=0.0)


@triton.jit
def _forward_kernel(P, Q, LOG_Z, R, C, H,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                    DOT: tl.constexpr, UPCAST: tl.constexpr):
    """log Z [R] of one row tile: online max m and sum s over the column tiles."""
    row0 = tl.program_id(0) * BLOCK_R
    p = _load_tile(P, row0, R, H, BLOCK_R, BLOCK_H)                        # [BR, BH]
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_R], tl.float32)
    for col0 in range(0, C, BLOCK_C):
        q = _load_tile(Q, col0, C, H, BLOCK_C, BLOCK_H)                    # [BC, BH]
        logits = _dot(p, tl.trans(q), tl.zeros([BLOCK_R, BLOCK_C], tl.float32), DOT, UPCAST)
        cols = col0 + tl.arange(0, BLOCK_C)
        logits = tl.where(cols[None, :] < C, logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))      # finite: every tile has a live column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
        m = m_new
    rows = row0 + tl.arange(0, BLOCK_R)
    tl.store(LOG_Z + rows, m + tl.log(s), mask=rows < R)


@triton.jit
def _grad_p_kernel(P, Q, LOG_Z, G, GRAD_P, R, C, H,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                   DOT: tl.constexpr, UPCAST: tl.constexpr):
    """grad P [BR, H] of one row tile = sum over column tiles of w [BR, BC] Q [BC, H]."""
    row0 = tl.program_id(0) * BLOCK_R
    rows = row0 + tl.arange(0, BLOCK_R)
    p = _load_tile(P, row0, R, H, BLOCK_R, BLOCK_H)
    log_z = tl.load(LOG_Z + rows, mask=rows < R, other=0.0)
    g = tl.load(G + rows, mask=rows < R, other=0.0)
    acc = tl.zeros([BLOCK_R, BLOCK_H], tl.float32)
    for col0 in range(0, C, BLOCK_C):
        q = _load_tile(Q, col0, C, H, BLOCK_C, BLOCK_H)
        logits = _dot(p, tl.trans(q), tl.zeros([BLOCK_R, BLOCK_C], tl.float32), DOT, UPCAST)
        w = tl.exp(logits - log_z[:, None]) * g[:, None]
        cols = col0 + tl.arange(0, BLOCK_C)
        w = tl.where(cols[None, :] < C, w, 0.0)
        acc = _dot(w.to(q.dtype), q, acc, DOT, UPCAST)
    hs = tl.arange(0, BLOCK_H)
    tl.store(GRAD_P + rows[:, None] * H + hs[None, :], acc, mask=(rows[:, None] < R) & (hs[None, :] < H))


@triton.jit
def _grad_q_kernel(P, Q, LOG_Z, G, GRAD_Q, R, C, H,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                   DOT: tl.constexpr, UPCAST: tl.constexpr):
    """grad Q [BC, H] of one column tile = sum over row tiles of w^T [BC, BR] P [BR, H]."""
    col0 = tl.program_id(0) * BLOCK_C
    cols = col0 + tl.arange(0, BLOCK_C)
    q = _load_tile(Q, col0, C, H, BLOCK_C, BLOCK_H)
    acc = tl.zeros([BLOCK_C, BLOCK_H], tl.float32)
    for row0 in range(0, R, BLOCK_R):
        rows = row0 + tl.arange(0, BLOCK_R)
        p = _load_tile(P, row0, R, H, BLOCK_R, BLOCK_H)
        log_z = tl.load(LOG_Z + rows, mask=rows < R, other=0.0)
        g = tl.load(G + rows, mask=rows < R, other=0.0)               # 0 on dead rows: w = 0
        logits_t = _dot(q, tl.trans(p), tl.zeros([BLOCK_C, BLOCK_R], tl.float32), DOT, UPCAST)
        w_t = tl.exp(logits_t - log_z[None, :]) * g[None, :]          # [BC, BR]
        w_t = tl.where(cols[:, None] < C, w_t, 0.0)
        acc = _dot(w_t.to(p.dtype), p, acc, DOT, UPCAST)
    hs = tl.arange(0, BLOCK_H)
    tl.store(GRAD_Q + cols[:, None] * H + hs[None, :], acc, mask=(cols[:, None] < C) & (hs[None, :] < H))


# ---------------------------------------------------------------------------------------
# Launchers and autograd
# ---------------------------------------------------------------------------------------

def _width(h: int) -> int:
    """The hidden tile: h rounded up to a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(h))


def _operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """[n, h] -> contiguous kernel operand: float32 (fp32 / tf32-rounded) or bfloat16 (bf16)."""
    x = round_operand(x.detach().float(), precision)
    return (x.to(torch.bfloat16) if precision == "bf16" else x).contiguous()


def _meta(h: int, precision: str, block: tuple[int, int]) -> dict:
    """Compile-time arguments of a kernel with tiles ``block`` = (block_r, block_c).

    Two pipeline stages for float32 operands of width >= 256: with three, the tf32 forward's
    shared memory (257 KiB at 64 x 64 tiles, h = 256) exceeds an H100/H200's 227 KiB.
    """
    width, (block_r, block_c) = _width(h), block
    wide = precision != "bf16" and width >= 256
    small = width <= 64 or block_r * block_c <= 1024
    return dict(BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_H=width, DOT=DOT_PRECISION[precision],
                UPCAST=INTERPRETED, num_warps=4 if small else 8, num_stages=2 if wide else 3)


def forward(p: torch.Tensor, q: torch.Tensor, precision: str, block: tuple[int, int]) -> torch.Tensor:
    """Rounded operands p [R, h], q [C, h] -> log Z [R] float32 (no autograd)."""
    (R, h), C = p.shape, len(q)
    log_z = torch.full((R,), -torch.inf, dtype=torch.float32, device=p.device)   # C = 0: -inf
    if R and C:
        _forward_kernel[(triton.cdiv(R, block[0]),)](p, q, log_z, R, C, h, **_meta(h, precision, block))
    return log_z


def backward(p, q, log_z, g, precision: str, block: tuple[int, int]):
    """Rounded operands, log Z [R] and g [R] -> (grad P [R, h], grad Q [C, h]) float32."""
    (R, h), C = p.shape, len(q)
    grad_p = torch.zeros(R, h, dtype=torch.float32, device=p.device)
    grad_q = torch.zeros(C, h, dtype=torch.float32, device=p.device)
    if R and C:
        args, meta = (p, q, log_z, g.float().contiguous()), _meta(h, precision, block)
        _grad_p_kernel[(triton.cdiv(R, block[0]),)](*args, grad_p, R, C, h, **meta)
        _grad_q_kernel[(triton.cdiv(C, block[1]),)](*args, grad_q, R, C, h, **meta)
    return grad_p, grad_q


class _FusedRowLogSumExp(torch.autograd.Function):

    @staticmethod
    def forward(ctx, p, q, precision: str, blocks: tuple[tuple[int, int], tuple[int, int]]):
        a, b = _operand(p, precision), _operand(q, precision)
        log_z = forward(a, b, precision, blocks[0])
        ctx.save_for_backward(a, b, log_z)
        ctx.args, ctx.dtypes = (precision, blocks[1]), (p.dtype, q.dtype)
        return log_z

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        a, b, log_z = ctx.saved_tensors
        with record_function("hmm.normalizer.backward"):
            grad_p, grad_q = backward(a, b, log_z, g, *ctx.args)
        return grad_p.to(ctx.dtypes[0]), grad_q.to(ctx.dtypes[1]), None, None


def _check(p: torch.Tensor, q: torch.Tensor, precision: str, block: tuple[int, int] | None) -> None:
    if p.dim() != 2 or q.dim() != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"need p [R, h] and q [C, h], got {tuple(p.shape)} and {tuple(q.shape)}")
    check_precision(precision)
    for b in block or ():
        if b < 16 or b & (b - 1):
            raise ValueError(f"block sizes must be powers of two >= 16, got {block}")
    if p.device != q.device:
        raise ValueError(f"p and q on different devices: {p.device}, {q.device}")
    if p.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(f"the Triton normalizer needs CUDA tensors (got {p.device}); on CPU set "
                           "TRITON_INTERPRET=1 before triton and hmm.fused_normalizer are imported, "
                           "or use impl='torch'")


def row_logsumexp(p: torch.Tensor, q: torch.Tensor, precision: str = "fp32",
                  block: tuple[int, int] | None = None) -> torch.Tensor:
    """p [R, h], q [C, h] -> [R] float32 log Z_u = logsumexp_j P_u . Q_j of the rounded operands.

    Differentiable in p and q (rounding is straight-through).  ``block``: (rows, columns) per
    tile of all three kernels, powers of two >= 16; None: ``TILES[precision]``.
    """
    _check(p, q, precision, block)
    blocks = TILES[precision] if block is None else (tuple(block), tuple(block))
    return _FusedRowLogSumExp.apply(p, q, precision, blocks)
