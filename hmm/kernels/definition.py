"""TensorIR definitions of the HMM forward and backward scans over transition blocks (float32,
log semiring).

Semantics are those of :mod:`hmm.inference` (``scan_forward_blocks`` / ``scan_backward_blocks``).
Edge t of stream b is implied by a table of log transition blocks and per-step log emissions:

    edges[b, t, u, j] = table[index[b, t], u, j] + emit[b, t, j]     where index[b, t] >= 0
                      = log-identity (0 if u == j else -inf)          where index[b, t] == -1

    forward(init [B, n], table [U, n, n], index [B, S] int32, emit [B, S, n], alpha [B, S+1, n])
        alpha[:, 0] = init;  alpha[:, t+1, j] = logsumexp_u(alpha[:, t, u] + edges[:, t, u, j])
    backward(table, index, emit, beta [B, S+1, n])
        beta[:, S] = 0;      beta[:, t, u]   = logsumexp_j(edges[:, t, u, j] + beta[:, t+1, j])

so a padding step (index -1) carries the message unchanged and ignores its emission.  The kernels
never form an edge: the forward adds emit[b, t, j] once after the sum over u, the backward once to
beta[b, t+1, j] before the sum over j.

Outputs are written in place (destination passing).  ``n`` is fixed per function; ``B``, ``S``
and ``U`` are symbolic int32 shape variables (so ``U * n * n`` and ``B * (S+1) * n`` must stay
below ``2**31``; :mod:`hmm.kernels.runtime` checks this and that index is in [-1, U)).  All S
steps run inside one call (one kernel launch on CUDA).

Every logsumexp is shifted by the maximum of its terms, written m + log(s) with s the shifted sum:
* all terms -inf gives -inf, never NaN (the shift is then 0, and s is 0 on CUDA or a tiny
  positive number on the CPU, so m + log(s) = -inf);
* any NaN term gives NaN.  The max may drop a NaN (max/fmaxf do).  On CUDA the NaN always
  enters s (expf(NaN) = NaN, and the sum is never skipped).  On the CPU the vectorized
  ``_fast_exp`` clamps NaN away, so the max pass also adds up the terms (one vector add per
  term, NaN iff a term is NaN) and a NaN total replaces the result.

The functions are hand-scheduled TensorIR (TVMScript with explicit parallel, vectorized and
thread-bound loops) because a scan carries a sequential dependence that the automatic
schedule primitives do not help with:

* llvm: parallel over the batch, vectorized over states, two passes per logsumexp (max, then
  sum of exp) with a polynomial exp that LLVM vectorizes (``te.exp`` would stay scalar).
* cuda: one thread block of P * n threads per sequence (P threads share each state's sum,
  P * n ~ CUDA_THREADS, for memory-level parallelism: only B = 16 blocks run).  The previous
  message lives in shared memory; each thread keeps an online (chunked) max-shifted sum in
  registers, and the P partial sums are merged through shared memory.  The forward reads rows
  ``table[g, u, :]``, coalesced across threads; the backward, where thread ``u`` needs row
  ``u``, stages ``[n, TJ]`` column tiles through padded shared memory so global reads stay
  coalesced and shared reads are free of bank conflicts.  The block index g = index[b, t] is
  the same for every thread of a block, so the padding branch is uniform (barriers are safe).
"""
from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T
from tvm.tirx import Cast, floor, reinterpret

from . import CUDA_MAX_STATES

NEG_INF = float("-inf")
LOG2E = 1.4426950408889634
LN2_HI = 0.693359375  # ln 2 = LN2_HI + LN2_LO; k * LN2_HI is exact for |k| < 2^14
LN2_LO = -2.12194440e-4
# Minimax polynomial for exp(r) - 1 - r on |r| <= ln(2)/2 (Cephes expf coefficients).
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1)

CUDA_THREADS = 512             # target threads per block (P threads per state)
CUDA_CHUNK = 16                # forward: terms held in registers per online-logsumexp update
CUDA_TILE_BYTES = 32 * 1024    # backward: shared-memory budget of one table tile


def llvm_target(mcpu: str = "x86-64-v3") -> tvm.target.Target:
    """The CPU target (x86-64-v3 = AVX2 + FMA; use "x86-64" for any x86-64 machine)."""
    return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": mcpu})


def cuda_target(arch: str = "sm_90") -> tvm.target.Target:
    """The CUDA target for one architecture, e.g. "sm_80" (A100) or "sm_90" (H100/H200)."""
    return tvm.target.Target({"kind": "cuda", "arch": arch})


def _fast_exp(x):
    """exp(x) for float32 as straight-line arithmetic (vectorizable); relative error ~1e-7.

    exp(x) = 2^k * exp(r) with k = round(x / ln 2), r = x - k ln 2.  x is clamped to
    [-87, 88] so 2^k is a normal float; exp(-87) ~ 1.6e-38 stands in for exp(-inf), which
    cannot change a sum that also holds the shift term exp(0) = 1.  The clamp turns NaN into a
    number: callers detect NaN terms themselves (see ``_finish_checked``).
    """
    x = T.min(T.max(x, T.float32(-87.0)), T.float32(88.0))
    k = floor(x * T.float32(LOG2E) + T.float32(0.5))
    r = x - k * T.float32(LN2_HI) - k * T.float32(LN2_LO)
    p = T.float32(EXP_POLY[0])
    for coef in EXP_POLY[1:]:
        p = p * r + T.float32(coef)
    two_k = reinterpret("float32", (Cast("int32", k) + 127) << 23)
    return (p * r * r + r + T.float32(1.0)) * two_k


def _finish(m, s):
    """log of a shifted sum: m + log(s).  -inf when every term was -inf (m = -inf, s >= 0),
    NaN when a term was NaN (s = NaN)."""
    return m + T.log(s)


def _finish_checked(m, s, total):
    """_finish for the CPU kernels, whose _fast_exp loses NaN: ``total`` is the plain sum of the
    terms, NaN iff a term was NaN (or +inf met -inf: +inf potentials are not supported)."""
    return T.Select(T.isnan(total), total, _finish(m, s))


def _safe_shift(m):
    """The shift to subtract: the max, or 0 when the max is -inf."""
    return T.Select(m == T.float32(NEG_INF), T.float32(0.0), m)


# --------------------------------------------------------------------------------------- CPU


def forward_llvm(n: int) -> tvm.tirx.PrimFunc:
    """Forward scan for the CPU: parallel over b; per step, lanes of L output states j."""
    L = math.gcd(n, 32)

    @T.prim_func
    def forward(init_h: T.handle, table_h: T.handle, index_h: T.handle, emit_h: T.handle,
                alpha_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B = T.int32()
        S = T.int32()
        U = T.int32()
        init = T.match_buffer(init_h, (B, n), "float32")
        table = T.match_buffer(table_h, (U, n, n), "float32")
        index = T.match_buffer(index_h, (B, S), "int32")
        emit = T.match_buffer(emit_h, (B, S, n), "float32")
        alpha = T.match_buffer(alpha_h, (B, S + 1, n), "float32")
        for b in T.parallel(B):
            mx = T.alloc_buffer((L,), "float32", scope="local")
            sm = T.alloc_buffer((L,), "float32", scope="local")
            tot = T.alloc_buffer((L,), "float32", scope="local")  # plain sum: NaN check
            for j in T.vectorized(n):
                alpha[b, 0, j] = init[b, j]
            for t in range(S):
                g = T.bind(index[b, t])
                if g < 0:
                    for j in T.vectorized(n):
                        alpha[b, t + 1, j] = alpha[b, t, j]
                else:
                    for jo in range(n // L):
                        for ji in T.vectorized(L):
                            mx[ji] = T.float32(NEG_INF)
                            sm[ji] = T.float32(0.0)
                            tot[ji] = T.float32(0.0)
                        for u in range(n):
                            for ji in T.vectorized(L):
                                mx[ji] = T.max(mx[ji], alpha[b, t, u] + table[g, u, jo * L + ji])
                                tot[ji] = tot[ji] + (alpha[b, t, u] + table[g, u, jo * L + ji])
                        for u in range(n):
                            for ji in T.vectorized(L):
                                sm[ji] = sm[ji] + _fast_exp(
                                    alpha[b, t, u] + table[g, u, jo * L + ji] - _safe_shift(mx[ji]))
                        for ji in range(L):
                            alpha[b, t + 1, jo * L + ji] = (_finish_checked(mx[ji], sm[ji], tot[ji])
                                                            + emit[b, t, jo * L + ji])

    return forward


def backward_llvm(n: int) -> tvm.tirx.PrimFunc:
    """Backward scan for the CPU: parallel over b; per row u, L lanes of partial max / sum."""
    L = math.gcd(n, 16)

    @T.prim_func
    def backward(table_h: T.handle, index_h: T.handle, emit_h: T.handle, beta_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B = T.int32()
        S = T.int32()
        U = T.int32()
        table = T.match_buffer(table_h, (U, n, n), "float32")
        index = T.match_buffer(index_h, (B, S), "int32")
        emit = T.match_buffer(emit_h, (B, S, n), "float32")
        beta = T.match_buffer(beta_h, (B, S + 1, n), "float32")
        for b in T.parallel(B):
            nxt = T.alloc_buffer((n,), "float32", scope="local")  # emit[b, t] + beta[b, t+1]
            lm = T.alloc_buffer((L,), "float32", scope="local")
            ls = T.alloc_buffer((L,), "float32", scope="local")
            lt = T.alloc_buffer((L,), "float32", scope="local")  # plain sum: NaN check
            red = T.alloc_buffer((3,), "float32", scope="local")  # row max, row sum, plain sum
            for j in T.vectorized(n):
                beta[b, S, j] = T.float32(0.0)
            for tt in range(S):
                t = T.bind(S - 1 - tt)
                g = T.bind(index[b, t])
                if g < 0:
                    for j in T.vectorized(n):
                        beta[b, t, j] = beta[b, t + 1, j]
                else:
                    for j in T.vectorized(n):
                        nxt[j] = emit[b, t, j] + beta[b, t + 1, j]
                    for u in range(n):
                        for ji in T.vectorized(L):
                            lm[ji] = T.float32(NEG_INF)
                            ls[ji] = T.float32(0.0)
                            lt[ji] = T.float32(0.0)
                        for jo in range(n // L):
                            for ji in T.vectorized(L):
                                lm[ji] = T.max(lm[ji], table[g, u, jo * L + ji] + nxt[jo * L + ji])
                                lt[ji] = lt[ji] + (table[g, u, jo * L + ji] + nxt[jo * L + ji])
                        red[0] = T.float32(NEG_INF)
                        red[2] = T.float32(0.0)
                        for ji in range(L):
                            red[0] = T.max(red[0], lm[ji])
                            red[2] = red[2] + lt[ji]
                        for jo in range(n // L):
                            for ji in T.vectorized(L):
                                ls[ji] = ls[ji] + _fast_exp(
                                    table[g, u, jo * L + ji] + nxt[jo * L + ji] - _safe_shift(red[0]))
                        red[1] = T.float32(0.0)
                        for ji in range(L):
                            red[1] = red[1] + ls[ji]
                        beta[b, t, u] = _finish_checked(red[0], red[1], red[2])

    return backward


# -------------------------------------------------------------------------------------- CUDA


def cuda_layout(n: int) -> tuple[int, int]:
    """(P, TJ): P threads share each state's reduction (P * n threads per block, about
    CUDA_THREADS); TJ columns per backward table tile (n * (TJ + 1) floats of shared memory).
    Both divide n, and P divides TJ."""
    if n > CUDA_MAX_STATES:
        raise ValueError(f"n={n}: CUDA kernels use at least one thread per state (at most {CUDA_MAX_STATES})")
    tj = math.gcd(n, max(1, min(32, CUDA_TILE_BYTES // (4 * n))))
    p = math.gcd(max(1, min(CUDA_THREADS // n, n // 16)), tj)
    return p, tj


@T.macro
def _online_update(acc, x, C):
    """Fold C terms x[0..C) into the running (max acc[0], shifted sum acc[1]); acc[2] (new max)
    and acc[3] (shift) are scratch.

    Shifted by 0 while every term so far is -inf (no -inf - -inf); never skipped, so a NaN
    term always reaches the sum.
    """
    acc[2] = acc[0]
    for i in T.unroll(C):
        acc[2] = T.max(acc[2], x[i])
    acc[3] = _safe_shift(acc[2])
    acc[1] = acc[1] * T.exp(acc[0] - acc[3])
    for i in T.unroll(C):
        acc[1] = acc[1] + T.exp(x[i] - acc[3])
    acc[0] = acc[2]


@T.macro
def _reduce_parts(acc, part, p, s, P):
    """Combine the P partial (max, sum) pairs of state s into acc[0] = logsumexp on thread p = 0.

    part [2, P, n] in shared memory; ends with a barrier so part may be reused.
    """
    if P > 1:
        part[0, p, s] = acc[0]
        part[1, p, s] = acc[1]
        T.tvm_storage_sync("shared")
        if p == 0:
            acc[0] = T.float32(NEG_INF)
            for q in T.unroll(P):
                acc[0] = T.max(acc[0], part[0, q, s])
            acc[3] = _safe_shift(acc[0])
            acc[1] = T.float32(0.0)
            for q in T.unroll(P):
                acc[1] = acc[1] + part[1, q, s] * T.exp(part[0, q, s] - acc[3])
    acc[0] = _finish(acc[0], acc[1])


def forward_cuda(n: int) -> tvm.tirx.PrimFunc:
    """Forward scan for CUDA: one block of P * n threads per sequence b.

    Thread (p, j) folds the terms u in [p n/P, (p+1) n/P) of output state j, reading column j
    of table[g] C rows at a time (coalesced across j) and alpha[b, t] from shared memory
    (broadcast); the P partial sums of each j are then combined through shared memory and
    emit[b, t, j] is added once.
    """
    P, _ = cuda_layout(n)
    K = n // P
    C = math.gcd(K, CUDA_CHUNK)

    @T.prim_func
    def forward(init_h: T.handle, table_h: T.handle, index_h: T.handle, emit_h: T.handle,
                alpha_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B = T.int32()
        S = T.int32()
        U = T.int32()
        init = T.match_buffer(init_h, (B, n), "float32")
        table = T.match_buffer(table_h, (U, n, n), "float32")
        index = T.match_buffer(index_h, (B, S), "int32")
        emit = T.match_buffer(emit_h, (B, S, n), "float32")
        alpha = T.match_buffer(alpha_h, (B, S + 1, n), "float32")
        b = T.launch_thread("blockIdx.x", B)
        tid = T.launch_thread("threadIdx.x", P * n)
        p = T.bind(tid // n)
        j = T.bind(tid % n)
        prev = T.alloc_buffer((n,), "float32", scope="shared")
        part = T.alloc_buffer((2, P, n), "float32", scope="shared")
        x = T.alloc_buffer((C,), "float32", scope="local")
        acc = T.alloc_buffer((4,), "float32", scope="local")
        if p == 0:
            alpha[b, 0, j] = init[b, j]
            prev[j] = init[b, j]
        T.tvm_storage_sync("shared")
        for t in range(S):
            g = T.bind(index[b, t])
            if g < 0:  # padding: identity edge, prev unchanged
                if p == 0:
                    alpha[b, t + 1, j] = prev[j]
            else:
                acc[0] = T.float32(NEG_INF)
                acc[1] = T.float32(0.0)
                for uo in range(K // C):
                    for i in T.unroll(C):
                        x[i] = prev[p * K + uo * C + i] + table[g, p * K + uo * C + i, j]
                    _online_update(acc, x, C)
                _reduce_parts(acc, part, p, j, P)
                T.tvm_storage_sync("shared")
                if p == 0:
                    acc[0] = acc[0] + emit[b, t, j]
                    alpha[b, t + 1, j] = acc[0]
                    prev[j] = acc[0]
                T.tvm_storage_sync("shared")

    return forward


def backward_cuda(n: int) -> tvm.tirx.PrimFunc:
    """Backward scan for CUDA: one block of P * n threads per sequence b.

    nxt[j] = beta[b, t+1, j] + emit[b, t, j] lives in shared memory.  Thread u needs row u of
    table[g], which would be a strided read.  So the block copies [n, TJ] column tiles into
    padded shared memory with coalesced reads (consecutive threads, consecutive columns), adding
    nxt on the way; thread (p, u) then folds its TJ/P columns of row u, and the P partial sums
    of each u are combined through shared memory.
    """
    P, TJ = cuda_layout(n)
    W = TJ // P        # tile columns per thread
    R = P * n // TJ    # tile rows filled per block-wide load

    @T.prim_func
    def backward(table_h: T.handle, index_h: T.handle, emit_h: T.handle, beta_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B = T.int32()
        S = T.int32()
        U = T.int32()
        table = T.match_buffer(table_h, (U, n, n), "float32")
        index = T.match_buffer(index_h, (B, S), "int32")
        emit = T.match_buffer(emit_h, (B, S, n), "float32")
        beta = T.match_buffer(beta_h, (B, S + 1, n), "float32")
        b = T.launch_thread("blockIdx.x", B)
        tid = T.launch_thread("threadIdx.x", P * n)
        p = T.bind(tid // n)
        u = T.bind(tid % n)
        nxt = T.alloc_buffer((n,), "float32", scope="shared")
        tile = T.alloc_buffer((n, TJ + 1), "float32", scope="shared")
        part = T.alloc_buffer((2, P, n), "float32", scope="shared")
        x = T.alloc_buffer((W,), "float32", scope="local")
        acc = T.alloc_buffer((4,), "float32", scope="local")
        if p == 0:
            beta[b, S, u] = T.float32(0.0)
            nxt[u] = T.float32(0.0)
        T.tvm_storage_sync("shared")
        for tt in range(S):
            t = T.bind(S - 1 - tt)
            g = T.bind(index[b, t])
            if g < 0:  # padding: identity edge, nxt (= beta[b, t+1]) unchanged
                if p == 0:
                    beta[b, t, u] = nxt[u]
            else:
                if p == 0:
                    nxt[u] = nxt[u] + emit[b, t, u]
                T.tvm_storage_sync("shared")
                acc[0] = T.float32(NEG_INF)
                acc[1] = T.float32(0.0)
                for jo in range(n // TJ):
                    for k in T.unroll(n // R):
                        tile[k * R + tid // TJ, tid % TJ] = (
                            table[g, k * R + tid // TJ, jo * TJ + tid % TJ] + nxt[jo * TJ + tid % TJ])
                    T.tvm_storage_sync("shared")
                    for i in T.unroll(W):
                        x[i] = tile[u, p * W + i]
                    _online_update(acc, x, W)
                    T.tvm_storage_sync("shared")
                _reduce_parts(acc, part, p, u, P)
                if p == 0:
                    beta[b, t, u] = acc[0]
                    nxt[u] = acc[0]
                T.tvm_storage_sync("shared")

    return backward
