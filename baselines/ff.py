"""Feed-forward n-gram neural language model (paper appendix A.3, "FF": a 5-gram model).

The previous ``K = order - 1`` words are embedded, mixed by one width-``K`` convolution
(equivalently a linear layer on their concatenation), then a ReLU MLP layer; the output
layer is tied to the word embedding (no output bias).  Before the start of a stream the
context is ``K`` learned pad embeddings.  With ``V = 10,000`` / ``33,278`` words and
``hidden = 256`` this has 2,889,216 / 8,848,384 parameters (paper: 2.9M / 8.8M).

Shapes: ``B`` rows (streams), ``T`` steps per window, ``V`` words, ``h`` hidden size.

The carry between windows is a [B, K] int64 tensor of the last ``K`` context ids of each row;
a negative id ``j - K`` stands for pad ``j`` (the stream start), so the initial context is
``[-K, ..., -1]`` and shifting the window keeps every pad's index.

Initialization: word and pad embeddings ~ U(-0.1, 0.1) (as in PyTorch's word_language_model
example); conv and linear layers keep PyTorch's default Kaiming-uniform init.

Precision: ``matmul_dtype`` (bf16 on a CPU with native bf16, :mod:`pipeline.training.precision`) is the
format of the training step's matrix products: the context MLP runs under autocast and the
output layer's products are bf16 with an fp32 normalizer (:mod:`baselines.output`).  The weights
stay fp32, and evaluation (``eval()`` mode) is always fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.dropout import Dropout
from baselines.output import token_logp


class FFLM(nn.Module):
    """``forward(x, mask, carry)`` returns (log p of each row's real tokens [B], new carry [B, K])."""

    def __init__(self, vocab_size: int, order: int, hidden: int, dropout: float):
        super().__init__()
        self.context = order - 1
        self.emb = nn.Embedding(vocab_size, hidden)
        self.pads = nn.Parameter(torch.empty(self.context, hidden))
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=self.context)
        self.lin = nn.Linear(hidden, hidden)
        self.drop = Dropout(dropout)
        nn.init.uniform_(self.emb.weight, -0.1, 0.1)
        nn.init.uniform_(self.pads, -0.1, 0.1)
        self.matmul_dtype: torch.dtype | None = None  # None: the weights' own

    def initial_state(self, batch_size: int) -> None:
        return None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids (negative: pad ``id + K``) -> [B, L, h] embeddings."""
        pad = self.pads[(ids + self.context).clamp(min=0, max=self.context - 1)]
        return torch.where((ids < 0)[..., None], pad, self.emb(ids.clamp(min=0)))

    def hidden(self, ctx: torch.Tensor) -> torch.Tensor:
        """[B, K + T, h] context embeddings -> [B, T, h] features, step t seeing ctx[t : t + K]."""
        h = F.relu(self.conv(ctx.transpose(1, 2)))[..., :-1].transpose(1, 2)  # drop the last: it sees no target
        return self.drop(F.relu(self.lin(self.drop(h))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, carry: torch.Tensor | None, per_token: bool = False):
        """x [B, T] int64, mask [B, T] bool (padding only at the end) -> (logp [B], carry [B, K]);
        ``per_token``: logp [B, T] of each token (0 at padding)."""
        B, K = x.shape[0], self.context
        if carry is None:
            carry = torch.arange(-K, 0, device=x.device).expand(B, K)
        x = x.masked_fill(~mask, 0)
        ids = torch.cat([carry, x], dim=1)                              # [B, K + T]
        dtype = self.matmul_dtype if self.training else None
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            h = self.hidden(self.drop(self.embed(ids)))                # [B, T, h]
        logp = token_logp(h.flatten(0, 1), self.emb.weight, None, x.flatten(), dtype).view(x.shape)
        logp = logp.masked_fill(~mask, 0.0)
        logp = logp if per_token else logp.sum(dim=1)
        lengths = mask.sum(dim=1, keepdim=True)                        # last real token at K + len - 1
        new_carry = ids.gather(1, lengths + torch.arange(K, device=x.device))
        return logp, new_carry.detach()
