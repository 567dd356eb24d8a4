"""Row log-normalizers of the factored transition, never forming the [R, C] logits.

    log_z = row_logsumexp(p, q, precision="fp32", impl=None)   # P [R, h], Q [C, h] -> log Z [R]
    log Z_u = logsumexp_j P_u . Q_j

Two implementations of the same numbers:

* ``impl="triton"``: fused kernels (:mod:`hmm.fused_normalizer`), logits tiles kept on chip,
  online logsumexp; the default for CUDA tensors (not float64) when triton is installed and the
  kernels pass ``triton_problem``'s probe on that GPU (once per process and device: a small
  problem against the float64 torch path; a launch error or a mismatch sends that device to the
  torch tiles, with a warning, instead of stopping a run).
* ``impl="torch"``: column tiles of width ``tile`` (default: ``TILE``, read at call time) folded
  into a running logsumexp in PyTorch; the reference, and the default elsewhere (CPU).

Both recompute the tiles in the backward pass.  With g = dL/dlog Z and the softmax weights
w[u, j] = exp(P_u . Q_j - log Z_u):

    dL/dP_u = g_u sum_j w[u, j] Q_j          dL/dQ_j = sum_u g_u w[u, j] P_u

Precision contract (:mod:`hmm.precision`).  Both paths first round the operands with
``round_operand(x, precision)``:

    "fp32"  identity (the torch path computes in the inputs' dtype, at least float32)
    "tf32"  float32 with the mantissa rounded to 10 bits, round to nearest even
    "bf16"  float32 holding bfloat16 values (round to nearest even)

Every product of two rounded operands is exact in float32 (11 x 11 or 8 x 8 significand bits),
so every path computes the float32 logits P_u . Q_j and their logsumexp from the same exact
products; paths differ only in the order of the float32 sums (tensor cores multiply
pre-rounded operands exactly).  A caller that forms entries log A[u, j] = P_u . Q_j - log Z_u
itself must use ``round_operand(P, precision) @ round_operand(Q, precision).T`` with the same
``precision`` as a float32 product (no autocast; for "fp32" torch's default "highest" float32
matmul precision) so that its rows still sum to 1 within float32 rounding.  Rounding is
straight-through: its gradient is the identity.  Autocast does not apply inside the normalizer;
the tensor-core operand format is chosen by ``precision`` alone.
"""
from __future__ import annotations

import importlib.util
import warnings

import torch
from torch.autograd.function import once_differentiable
from torch.profiler import record_function

from hmm.precision import check_precision, round_values

TILE = 1024
IMPLS = ("triton", "torch")


# ---------------------------------------------------------------------------------------
# The torch path: column tiles
# ---------------------------------------------------------------------------------------

def _torch_operands(p: torch.Tensor, q: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rounded operands: float32 (tf32 / bf16), or the inputs' common dtype, at least float32 (fp32)."""
    if precision == "fp32":
        dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), torch.float32)
        return p.detach().to(dtype), q.detach().to(dtype)
    return round_values(p.detach().float(), precision), round_values(q.detach().float(), precision)


class _TiledRowLogSumExp(torch.autograd.Function):

    @staticmethod
    def forward(ctx, p: torch.Tensor, q: torch.Tensor, precision: str, tile: int) -> torch.Tensor:
        a, b = _torch_operands(p, q, precision)
        with torch.autocast(a.device.type, enabled=False):
            log_z = torch.full((len(a),), -torch.inf, dtype=a.dtype, device=a.device)
            for start in range(0, len(b), tile):
                log_z = torch.logaddexp(log_z, (a @ b[start:start + tile].T).logsumexp(dim=1))   # [R, tile]
        ctx.tile, ctx.dtypes = tile, (p.dtype, q.dtype)
        ctx.save_for_backward(a, b, log_z)
        return log_z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, b, log_z = ctx.saved_tensors
        grad_p, grad_q = torch.zeros_like(a), torch.empty_like(b)
        with torch.autocast(a.device.type, enabled=False), record_function("hmm.normalizer.backward"):
            for start in range(0, len(b), ctx.tile):
                b_tile = b[start:start + ctx.tile]
                w = (a @ b_tile.T).sub_(log_z[:, None]).exp_().mul_(grad[:, None])     # [R, tile]
                grad_p.addmm_(w, b_tile)
                grad_q[start:start + ctx.tile] = w.T @ a
        return grad_p.to(ctx.dtypes[0]), grad_q.to(ctx.dtypes[1]), None, None


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------

def triton_available() -> bool:
    """Whether the triton package is installed (imported only when the Triton path runs)."""
    return importlib.util.find_spec("triton") is not None


PROBE_TOLERANCE = 1e-4          # relative: log Z and both gradients of the probe, fused fp32 vs float64
_PROBED: dict[str, str | None] = {}   # device -> why the fused kernels cannot serve it (None: they can)
_WARNED: set[str] = set()             # devices whose failed probe was warned about


def triton_problem(device: torch.device | str) -> str | None:
    """Why the fused kernels cannot serve ``device`` (None: they can).  Probed once per process and
    device: log Z and both gradients of a small ragged problem, fused (fp32) against the float64
    torch path.  A launch failure (e.g. no C compiler for Triton's launcher, no libcuda) or a
    result off by more than ``PROBE_TOLERANCE`` is the reason returned."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    if key not in _PROBED:
        _PROBED[key] = "triton is not installed" if not triton_available() else _probe(device)
    return _PROBED[key]


def _probe(device: torch.device) -> str | None:
    try:
        from hmm import fused_normalizer
        gen = torch.Generator().manual_seed(0)
        p64, q64, w64 = torch.randn(37, 24, generator=gen, dtype=torch.float64), \
            torch.randn(150, 24, generator=gen, dtype=torch.float64), torch.rand(37, generator=gen, dtype=torch.float64)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            results = []
            for fn, dtype in ((lambda a, b: fused_normalizer.row_logsumexp(a, b, "fp32", (16, 32)), torch.float32),
                              (lambda a, b: row_logsumexp(a, b, "fp32", impl="torch"), torch.float64)):
                p, q = (x.to(device, dtype).requires_grad_() for x in (p64, q64))
                log_z = fn(p, q)
                grads = torch.autograd.grad((log_z * w64.to(device, log_z.dtype)).sum(), (p, q))
                results.append([t.detach().double().cpu() for t in (log_z, *grads)])
        err = max(((g - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for g, r in zip(*results))
    except Exception as exc:  # noqa: BLE001 - any failure to run is the reason: the torch tiles serve instead
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return f"the fused Triton kernels failed on {device}: {type(exc).__name__}: {first}"
    if not err <= PROBE_TOLERANCE:
        return (f"the fused Triton kernels differ from the float64 torch path on {device} "
                f"(max relative error {err:.2e} > {PROBE_TOLERANCE:g})")
    return None


def impl_for(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The default path for tensors of ``dtype`` on ``device``: "triton" on a CUDA device whose probe
    passed (``triton_problem``; not float64), else "torch".  Warns once per device where triton is
    installed but its probe failed."""
    device = torch.device(device)
    if device.type != "cuda" or dtype == torch.float64 or not triton_available():
        return "torch"
    problem = triton_problem(device)
    if problem is None:
        return "triton"
    if str(device) not in _WARNED:
        _WARNED.add(str(device))
        warnings.warn(f"{problem}; the transition normalizer uses the torch tiles instead (same numbers, slower)",
                      RuntimeWarning, stacklevel=3)
    return "torch"


def default_impl(p: torch.Tensor, q: torch.Tensor) -> str:
    """``impl_for`` p's device: "triton" for CUDA tensors (not float64) whose device passed the probe."""
    if p.device != q.device:
        return "torch"
    return impl_for(p.device, torch.float64 if torch.float64 in (p.dtype, q.dtype) else torch.float32)


def row_logsumexp(p: torch.Tensor, q: torch.Tensor, precision: str = "fp32", impl: str | None = None,
                  tile: int | None = None) -> torch.Tensor:
    """p [R, h], q [C, h] -> [R] log Z_u = logsumexp_j P_u . Q_j of the rounded operands.

    ``precision``: "fp32" | "tf32" | "bf16" (module docstring).  ``impl``: None (``default_impl``;
    torch whenever ``tile`` is given), "triton" (CPU tensors only under TRITON_INTERPRET=1) or
    "torch".  ``tile``: columns per tile of the torch path (default ``TILE``).  Differentiable
    in p and q.  Returns float32 (float64 for float64 inputs on the torch path with "fp32").
    """
    check_precision(precision)
    if impl is None:
        impl = "torch" if tile is not None else default_impl(p, q)
    if impl == "triton":
        if tile is not None:
            raise ValueError("tile applies to impl='torch' only (the Triton kernels have block_r / block_c)")
        from hmm import fused_normalizer
        return fused_normalizer.row_logsumexp(p, q, precision)
    if impl != "torch":
        raise ValueError(f"impl must be None or one of {IMPLS}, got {impl!r}")
    tile = TILE if tile is None else tile
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    return _TiledRowLogSumExp.apply(p, q, precision, tile)
