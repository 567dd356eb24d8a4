"""LSTM language model (paper appendix A.3): embedding, 2-layer LSTM, tied output layer.

Embedding ``V x h``, dropout, ``nn.LSTM(h, h, layers)`` with dropout between layers, dropout,
and an output layer tied to the embedding weight plus an output bias.  With
``V = 10,000`` / ``33,278`` and ``h = 256`` this has 3,622,672 / 9,605,118 parameters
(paper: 3.6M / 9.6M).

Shapes: ``B`` rows (streams), ``T`` steps per window, ``V`` words, ``h`` hidden size,
``L`` layers.  The carry is the LSTM state ``(h, c)``, each [L, B, h], after each row's last
real token; a stream starts from the zero state.  Token ``x_t`` is scored from the top-layer
output *before* it is read (the carry's top ``h`` for a window's first token), so every token
is scored, the first of a stream from the zero state: ``p(x_0) = softmax(output bias)``.

Initialization (as in PyTorch's word_language_model example): embedding ~ U(-0.1, 0.1),
output bias 0, LSTM weights PyTorch's default U(-1/sqrt(h), 1/sqrt(h)).

Precision: ``matmul_dtype`` (bf16 on a CPU with native bf16, :mod:`pipeline.training.precision`) is the
format of the training step's matrix products: embedding and LSTM under autocast (oneDNN's bf16
LSTM), the output layer's products bf16 with an fp32 normalizer (:mod:`baselines.output`); the
weights and the carried state stay fp32, and evaluation (``eval()`` mode) is always fp32.
A window whose rows are all full (every window but an epoch's last) runs the LSTM unpacked.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from baselines.dropout import Dropout
from baselines.output import token_logp


class LSTMLM(nn.Module):
    """``forward(x, mask, carry)`` returns (log p of each row's real tokens [B], new (h, c))."""

    def __init__(self, vocab_size: int, layers: int, hidden: int, dropout: float):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, dropout=dropout, batch_first=True)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.drop = Dropout(dropout)
        nn.init.uniform_(self.emb.weight, -0.1, 0.1)
        self.matmul_dtype: torch.dtype | None = None  # None: the weights' own

    def initial_state(self, batch_size: int) -> None:
        return None

    def forward(self, x: torch.Tensor, mask: torch.Tensor, carry: tuple[torch.Tensor, torch.Tensor] | None,
                per_token: bool = False):
        """x [B, T] int64, mask [B, T] bool (padding only at the end) -> (logp [B], (h, c));
        ``per_token``: logp [B, T] of each token (0 at padding)."""
        B, T = x.shape
        if carry is None:
            zeros = self.emb.weight.new_zeros(self.lstm.num_layers, B, self.lstm.hidden_size)
            carry = (zeros, zeros)
        x = x.masked_fill(~mask, 0)
        lengths = mask.sum(dim=1)
        dtype = self.matmul_dtype if self.training else None
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            inputs = self.drop(self.emb(x))
            if bool(mask.all()):
                out, (h, c) = self.lstm(inputs, carry)
            else:  # packing stops each row's state at its last real token; an empty row runs one step
                packed = pack_padded_sequence(inputs, lengths.clamp(min=1).cpu(), batch_first=True,
                                              enforce_sorted=False)  # (its output masked, its carry restored below)
                out, (h, c) = self.lstm(packed, carry)
                out = pad_packed_sequence(out, batch_first=True, total_length=T)[0]
            # [B, T, h] before x_t: the carry's top h for the first token, then the outputs after x_0 .. x_{T-2}
            before = self.drop(torch.cat([carry[0][-1][:, None].to(out.dtype), out[:, :-1]], dim=1))
        logp = token_logp(before.flatten(0, 1), self.emb.weight, self.bias, x.flatten(), dtype).view(x.shape)
        logp = logp.masked_fill(~mask, 0.0)
        logp = logp if per_token else logp.sum(dim=1)
        keep = (lengths == 0)[None, :, None]  # rows without tokens keep their carry
        h, c = torch.where(keep, carry[0], h.float()), torch.where(keep, carry[1], c.float())
        return logp, (h.detach(), c.detach())
