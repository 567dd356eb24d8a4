"""Row log-normalizers of the factored transition, never forming the [R, C] logits.

    log_z = row_logsumexp(p, q, precision="fp32", impl=None)   # P [R, h], Q [C, h] -> log Z [R]
    log Z_u = logsumexp_j P_u . Q_j

Two implementations of the same numbers:

* ``impl="triton"``: fused kernels (:mod:`hmm.fused_normalizer`), logits tiles kept on chip,
  online logsumexp; the default for CUDA tensors (not float64) when triton is installed and the
  kernels pass ``triton_problem``'s probe on that GPU (once per process, device and precision: the
  run's kernels on a small problem against float64; a compile or launch error or a mismatch sends
  them to the torch tiles, with a warning, instead of stopping a run).
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

from hmm.precision import check_precision, round_operand, round_values

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


# relative tolerances of the probe, fused vs float64 of the rounded operands: (log Z, gradients); the gradient
# products run in the reduced format under tf32 / bf16 (hmm.fused_normalizer)
PROBE_TOLERANCE = {"fp32": (1e-5, 1e-4), "tf32": (1e-5, 5e-3), "bf16": (1e-5, 2e-2)}
_PROBED: dict[str, str | None] = {}   # "<device> <precision>" -> why the fused kernels cannot serve it (None: they can)
_WARNED: set[str] = set()             # those whose failed probe was warned about


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def triton_problem(device: torch.device | str, precision: str = "fp32") -> str | None:
    """Why the fused kernels cannot serve ``precision`` on ``device`` (None: they can).  Probed once per process,
    device and precision, with the kernels a run uses (that precision's default tiles, h = 256): log Z and both
    gradients of a small ragged problem against float64 of the rounded operands.  A compile or launch failure
    (no C compiler for Triton's launcher, no libcuda, out of shared memory) or a result off by more than
    ``PROBE_TOLERANCE`` is the reason returned."""
    check_precision(precision)
    device = _device(device)
    key = f"{device} {precision}"
    if key not in _PROBED:
        _PROBED[key] = "triton is not installed" if not triton_available() else _probe(device, precision)
    return _PROBED[key]


def _probe(device: torch.device, precision: str = "fp32") -> str | None:
    try:
        from hmm import fused_normalizer
        gen = torch.Generator().manual_seed(0)
        h = 256
        p64, q64 = (torch.randn(n, h, generator=gen, dtype=torch.float64) / h ** 0.25 for n in (70, 150))
        w64 = torch.rand(70, generator=gen, dtype=torch.float64)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            p, q = (x.to(device, torch.float32).requires_grad_() for x in (p64, q64))
            log_z = fused_normalizer.row_logsumexp(p, q, precision)
            got = [log_z, *torch.autograd.grad((log_z * w64.to(device, torch.float32)).sum(), (p, q))]
            a, b = (round_operand(x.float(), precision).double().requires_grad_() for x in (p64, q64))
            ref_z = torch.logsumexp(a @ b.T, dim=1)
            ref = [ref_z, *torch.autograd.grad((ref_z * w64).sum(), (a, b))]
        errs = [((g.detach().double().cpu() - r.detach()).abs().max() / r.detach().abs().max().clamp_min(1e-30)).item()
                for g, r in zip(got, ref)]
    except Exception as exc:  # noqa: BLE001 - any failure to run is the reason: the torch tiles serve instead
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return f"the fused Triton kernels ({precision}) failed on {device}: {type(exc).__name__}: {first}"
    z_tol, grad_tol = PROBE_TOLERANCE[precision]
    if not (errs[0] <= z_tol and max(errs[1:]) <= grad_tol):
        return (f"the fused Triton kernels ({precision}) differ from float64 on {device} (relative error: log Z "
                f"{errs[0]:.1e}, gradients {max(errs[1:]):.1e}; allowed {z_tol:g}, {grad_tol:g})")
    return None


def impl_for(device: torch.device | str, dtype: torch.dtype = torch.float32, precision: str = "fp32") -> str:
    """The default path for tensors of ``dtype`` on ``device`` at operand ``precision``: "triton" on a CUDA
    device whose probe passed (``triton_problem``; not float64), else "torch".  Warns once per device and
    precision where triton is installed but its probe failed."""
    device = torch.device(device)
    if device.type != "cuda" or dtype == torch.float64 or not triton_available():
        return "torch"
    problem = triton_problem(device, precision)
    if problem is None:
        return "triton"
    if problem not in _WARNED:
        _WARNED.add(problem)
        warnings.warn(f"{problem}; the transition normalizer uses the torch tiles instead (same numbers, slower)",
                      RuntimeWarning, stacklevel=3)
    return "torch"


def default_impl(p: torch.Tensor, q: torch.Tensor, precision: str = "fp32") -> str:
    """``impl_for`` p's device: "triton" for CUDA tensors (not float64) whose device passed the probe."""
    if p.device != q.device:
        return "torch"
    return impl_for(p.device, torch.float64 if torch.float64 in (p.dtype, q.dtype) else torch.float32, precision)


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
        impl = "torch" if tile is not None else default_impl(p, q, precision)
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
