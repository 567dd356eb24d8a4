"""Dropout whose mask is one uniform draw per element compared with p (keep where u >= p, scale 1 / (1 - p)).

The same distribution as ``nn.Dropout``, drawn ~3-4x faster on a CPU: torch's CPU ``bernoulli_``
draws element by element (measured on an AMD EPYC Zen 4, 2 threads, [128, 64, 256]: ``F.dropout``
40 ms, ``torch.rand`` 7 ms), and the FF model drops 6.4 M activations a step.
"""
from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
