"""Operand formats of the transition normalizer: the precision contract of :mod:`hmm.normalizer`.

    "fp32"  identity (the torch path computes in the inputs' dtype, at least float32)
    "tf32"  float32 with the mantissa rounded to 10 bits, round to nearest even
    "bf16"  float32 holding bfloat16 values (round to nearest even)

Both normalizers (:mod:`hmm.normalizer`, :mod:`hmm.fused_normalizer`) and the model round their
operands here, so that every path multiplies the same values.
"""
from __future__ import annotations

import torch

PRECISIONS = ("fp32", "tf32", "bf16")
_TF32_DROPPED_BITS = 13            # float32 has 23 mantissa bits, TF32 keeps 10


def check_precision(precision: str) -> None:
    """ValueError unless ``precision`` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> float32 with the mantissa rounded to 10 bits (nearest, ties to even).

    Adding 0xFFF plus the kept last bit to the bit pattern and clearing the 13 dropped bits
    rounds the magnitude (a carry into the exponent is the correct round-up; the largest finite
    values round to inf as in TF32).  inf and nan are returned unchanged.
    """
    bits = x.view(torch.int32)
    keep_lsb = (bits >> _TF32_DROPPED_BITS) & 1
    low_mask = (1 << _TF32_DROPPED_BITS) - 1
    rounded = ((bits + (low_mask >> 1) + keep_lsb) & ~low_mask).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


def round_values(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``round_operand`` without autograd (for operands already detached)."""
    if precision == "fp32":
        return x
    if x.dtype != torch.float32:
        raise TypeError(f"round_operand({precision!r}) takes float32, got {x.dtype}")
    return _round_tf32(x) if precision == "tf32" else x.to(torch.bfloat16).float()


class _RoundOperand(torch.autograd.Function):
    """Rounding with an identity (straight-through) gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, precision: str) -> torch.Tensor:
        return round_values(x, precision)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def round_operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """x [...] -> x rounded to the operand format of ``precision`` (see the module docstring).

    "fp32": x itself (any dtype); "tf32" / "bf16": float32 x -> float32 of TF32 / bfloat16
    values.  Differentiable with the identity gradient.
    """
    check_precision(precision)
    if precision == "fp32":
        return x
    return _RoundOperand.apply(x, precision)
