"""The very large neural HMM (VLNHMM): blocked emissions, neural parameterization, state dropout.

States: ``C = num_states``.  Under the ``brown`` constraint the vocabulary is split into
``M`` blocks (Brown clusters) and block ``m`` owns states ``[m k, (m+1) k)``, ``k = C / M``;
a word can only be emitted by the ``k`` states of its block (``none`` is one block holding
every word; ``uniform`` gives each word its own random ``n`` states).

Each training batch draws the live states (state dropout keeps ``k'`` states per block, drawn on
the model's device from its own checkpointed generator), builds start, transition and emission
distributions over the live states only, and scores the window exactly (:mod:`hmm.inference`).
Evaluation uses all states with parameters built once and cached until the weights change.
Shapes: ``B`` streams, ``T`` steps (``S = T - 1`` edges), ``n`` live states per step, ``V`` words,
``h`` hidden size, ``C'`` live states in total, ``M`` blocks.

What the scans read is the block form of :mod:`hmm.inference`: init [B, n], a table of
transition blocks [U, n, n], which block each edge uses [B, S] and the emissions [B, S, n]; no
[B, S, n, n] edge tensor is formed.  In training each edge gets its own block of the live states
(U = B S); at evaluation (brown / none) the table is every block pair of the cached matrix
(U = M^2, plus M rows of the start distribution when ``<eos>`` resets), indexed by the words' blocks.

The transition matrix is the costly part (C'^2 h, C'^2 memory).  In the neural
parameterization its logits are P Q^T (P: previous-state side [C', h], Q: next-state side),
so training keeps only the factors and the row normalizers log Z = logsumexp_j P Q^T
(:func:`hmm.normalizer.row_logsumexp`: fused in Triton on a GPU) and forms just the [n, n] blocks
a batch reads: log A[u, j] = P_u . Q_j - log Z_u, with the operands rounded as the normalizer
rounds them (``precision``), so rows sum to 1.  The scalar parameterization and transition dropout
(a dense mask) keep the dense matrix; evaluation forms it once and caches it.

Emissions are normalized per block over the block's own words, in chunks of ``EMIT_CHUNK``
words (a block's last chunk padded), never padded to the largest block; a batch reads its tokens'
logits and their blocks' normalizers, never a [V, n] table of log probabilities (:class:`ChunkEmission`).

Parts of the computation are named for profilers (``torch.profiler.record_function``):
``vlnhmm.mlp``, ``vlnhmm.normalizer``, ``vlnhmm.emission``, ``vlnhmm.potentials``; the scans
and their backward are ``hmm.scan.*`` (hmm.inference), the normalizer's backward
``hmm.normalizer.backward``.  Nothing in a training step reads a value back to the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from hmm import inference
from hmm.config import HMMConfig
from hmm.normalizer import row_logsumexp
from hmm.precision import round_operand

EMIT_CHUNK = 32  # words per emission chunk


class ResidualBlock(nn.Module):
    """R(E) = LayerNorm(ReLU(U W2 + b2) + U) with U = ReLU(E W1 + b1) (paper eq. 9, with biases)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        u = F.relu(self.lin1(e))
        return self.norm(F.relu(self.lin2(u)) + u)


# ---------------------------------------------------------------------------------------
# Emission structure: which states may emit which word
# ---------------------------------------------------------------------------------------


class Structure(nn.Module):
    """The emission constraint as index tables (buffers, saved with the model).

    brown / none: ``block_of_word`` [V]; each block's words in chunks of ``EMIT_CHUNK``:
    ``chunk_words`` [NC, Q] (word ids, -1 pads a block's last chunk), ``chunk_block`` [NC],
    ``block_chunks`` [M, Cmax] (each block's chunk ids, -1 padded), ``chunk_counts`` (chunks per block,
    host ints; a block's chunks are consecutive), and per word its chunk
    ``word_chunk`` [V] and position in it ``word_pos`` [V], and its row ``word_row`` [V] in the chunks'
    word-major emission logits [NC Q, n].  uniform: ``word_states`` [V, n].
    Built on the CPU (also under a meta device context).
    """

    def __init__(self, cfg: HMMConfig, clusters: np.ndarray | None, vocab_size: int, seed: int):
        super().__init__()
        self.constraint = cfg.constraint
        self.num_states = cfg.num_states
        self.k = cfg.states_per_block
        cpu = torch.device("cpu")
        if cfg.constraint == "uniform":
            g = torch.Generator().manual_seed(seed)
            states = torch.rand(vocab_size, cfg.num_states, generator=g, device=cpu).argsort(dim=1)[:, : self.k]
            self.register_buffer("word_states", states.sort(dim=1).values)
            used = torch.zeros(cfg.num_states, dtype=torch.bool, device=cpu)
            used[self.word_states.flatten()] = True
            if not used.all():
                raise ValueError(f"uniform constraint: {int((~used).sum())} states emit no word; use more states_per_word")
            return
        if cfg.constraint == "none":
            clusters = np.zeros(vocab_size, dtype=np.int64)
        if clusters is None or len(clusters) != vocab_size:
            raise ValueError("the brown constraint needs a cluster id for every vocabulary word")
        if clusters.max() + 1 != cfg.num_clusters:
            raise ValueError(f"the cluster file has {clusters.max() + 1} clusters, the model num_clusters {cfg.num_clusters}")
        self.register_buffer("block_of_word", torch.as_tensor(clusters, dtype=torch.long, device=cpu))
        self._chunk_layout(np.asarray(clusters), cfg.num_clusters)

    def _chunk_layout(self, clusters: np.ndarray, M: int) -> None:
        sizes = np.bincount(clusters, minlength=M)
        Q = min(EMIT_CHUNK, int(sizes.max()))
        chunks_of = -(-sizes // Q)                                   # ceil: chunks per block
        starts = np.concatenate([[0], np.cumsum(chunks_of)[:-1]])   # each block's first chunk
        NC = int(chunks_of.sum())
        chunk_words = np.full((NC, Q), -1, dtype=np.int64)
        word_chunk = np.empty(len(clusters), dtype=np.int64)
        word_pos = np.empty(len(clusters), dtype=np.int64)
        for m in range(M):
            words = np.flatnonzero(clusters == m)                    # vocabulary order inside a block
            slots = np.arange(len(words))
            word_chunk[words] = starts[m] + slots // Q
            word_pos[words] = slots % Q
            chunk_words[word_chunk[words], word_pos[words]] = words
        block_chunks = np.full((M, int(chunks_of.max())), -1, dtype=np.int64)
        for m in range(M):
            block_chunks[m, : chunks_of[m]] = starts[m] + np.arange(chunks_of[m])
        self.chunk_counts = tuple(int(c) for c in chunks_of)        # chunks per block (host ints, not saved)
        for name, value in (("chunk_words", chunk_words), ("chunk_block", np.repeat(np.arange(M), chunks_of)),
                            ("block_chunks", block_chunks), ("word_chunk", word_chunk), ("word_pos", word_pos)):
            self.register_buffer(name, torch.as_tensor(value, device=torch.device("cpu")))
        # each word's row in the chunks' word-major [NC Q, n] emission logits (derived: not saved)
        self.register_buffer("word_row", torch.as_tensor(word_chunk * Q + word_pos), persistent=False)

    @property
    def num_blocks(self) -> int:
        return 1 if self.constraint == "uniform" else len(self.block_chunks)

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device


def block_positions(block_of_word: torch.Tensor, words: torch.Tensor, k: int) -> torch.Tensor:
    """words [...] -> [..., k]: the positions ``block_of_word[w] k + [0, k)`` of each word's block among
    states laid out block by block, k per block."""
    return block_of_word[words][..., None] * k + torch.arange(k, device=words.device)


@dataclass
class Live:
    """The states in use for one batch.

    ``states`` [C'] global ids; ``per_block`` k' (brown/none: block m's live states are
    ``states[m k' : (m+1) k']``, so word w's are positions ``block_of_word[w] k' + [0, k')``);
    uniform: ``table`` [V, n], each word's positions into ``states``.
    """

    states: torch.Tensor
    per_block: int
    block_of_word: torch.Tensor | None = None
    table: torch.Tensor | None = None

    def positions(self, words: torch.Tensor) -> torch.Tensor:
        """words [...] -> [..., n] positions into ``states`` of each word's live states."""
        if self.table is not None:
            return self.table[words]
        return block_positions(self.block_of_word, words, self.per_block)

    @property
    def word_states(self) -> torch.Tensor:
        """[V, n] the positions of every word (formed on demand: tests, inspection)."""
        V = len(self.table if self.table is not None else self.block_of_word)
        return self.positions(torch.arange(V, device=self.states.device))


def sample_live(structure: Structure, keep: int, generator: torch.Generator | None) -> Live:
    """Keep ``keep`` of the ``k`` states of every block, uniformly without replacement (all if
    ``generator`` is None), drawn on the structure's device.  Uniform-constraint models keep every state."""
    k, C, device = structure.k, structure.num_states, structure.device
    if structure.constraint == "uniform":
        return Live(torch.arange(C, device=device), k, table=structure.word_states)
    M = structure.num_blocks
    if generator is None or keep == k:
        local, keep = torch.arange(k, device=device).expand(M, k), k
    else:
        local = torch.rand(M, k, generator=generator, device=device).argsort(dim=1)[:, :keep].sort(dim=1).values
    states = (local + k * torch.arange(M, device=device)[:, None]).flatten()
    return Live(states, keep, block_of_word=structure.block_of_word)


# ---------------------------------------------------------------------------------------
# Parameterizations: logits for any set of states
# ---------------------------------------------------------------------------------------


class NeuralParameterization(nn.Module):
    """Logits from state and word embeddings through residual MLPs (paper section 4, A.4).

    ``independent``: one table E_z [C, h] serves every role.  ``factored``: a block embedding
    E_m [M, h/2] and a state embedding E'_z [C, h/2], concatenated and composed by one residual
    block per role (start, previous, next, emission).
    """

    roles = ("start", "prev", "next", "emit")

    def __init__(self, cfg: HMMConfig, vocab_size: int, num_blocks: int):
        super().__init__()
        h = cfg.hidden
        self.factored = cfg.state_repr == "factored"
        self.k = cfg.states_per_block
        if self.factored:
            self.block_emb = nn.Parameter(torch.empty(num_blocks, h // 2))
            self.state_emb = nn.Parameter(torch.empty(cfg.num_states, h // 2))
            self.compose = nn.ModuleDict({r: ResidualBlock(h) for r in self.roles})
        else:
            self.state_emb = nn.Parameter(torch.empty(cfg.num_states, h))
        self.start_mlp = ResidualBlock(h)
        self.start_out = nn.Linear(h, 1)
        self.trans_mlp = ResidualBlock(h)
        self.emit_mlp = ResidualBlock(h)
        self.word_emb = nn.Parameter(torch.empty(vocab_size, h))
        self.word_bias = nn.Parameter(torch.zeros(vocab_size))
        if cfg.init == "kaiming":  # paper A.3: Kaiming uniform for all weights
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.kaiming_uniform_(p)
        else:  # torch-default: the released code's nn.Embedding tables and nn.Linear(h, V) word projection
            for emb in (self.state_emb, getattr(self, "block_emb", None)):
                if emb is not None:
                    nn.init.normal_(emb)
            nn.init.uniform_(self.word_emb, -(h**-0.5), h**-0.5)
            nn.init.uniform_(self.word_bias, -(h**-0.5), h**-0.5)

    def embed(self, states: torch.Tensor, role: str) -> torch.Tensor:
        """[..., h] representation of ``states`` for one role."""
        if not self.factored:
            return self.state_emb[states]
        e = torch.cat([self.block_emb[states // self.k], self.state_emb[states]], dim=-1)
        return self.compose[role](e)

    def start_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.start_out(self.start_mlp(self.embed(states, "start"))).squeeze(-1)

    def transition_prev(self, states: torch.Tensor) -> torch.Tensor:
        """[..., h] previous-state side P of the transition logits (through the MLP)."""
        return self.trans_mlp(self.embed(states, "prev"))

    def transition_next(self, states: torch.Tensor) -> torch.Tensor:
        """[..., h] next-state side Q of the transition logits (raw embedding)."""
        return self.embed(states, "next")

    def transition_logits(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[R, C'] logits psi[rows, cols] = P[rows] Q[cols]^T."""
        return self.transition_prev(rows) @ self.transition_next(cols).T

    def emission_chunks(self, block_states: torch.Tensor, chunk_block: torch.Tensor,
                        chunk_words: torch.Tensor, chunk_counts: tuple[int, ...]) -> torch.Tensor:
        """block_states [M, r], chunk_block [NC], chunk_words [NC, Q] (-1: padding), chunk_counts (chunks
        per block, consecutive) -> [NC, Q, r] logits phi[state, word] of each chunk's words from its block's
        states, word-major (a word's logits are one contiguous row), -inf at padding.

        On a GPU one batched product of each chunk with its block's states; on a CPU one product per
        block (its chunks side by side): the same numbers, 2x faster there than a batch of [Q, h] x
        [h, r] pieces and without the [NC, r, h] copy of the states whose backward is a serial scatter-add."""
        hs = self.emit_mlp(self.embed(block_states, "emit"))                       # [M, r, h]
        (NC, Q), h = chunk_words.shape, hs.shape[-1]
        flat = chunk_words.flatten()
        words = self.word_emb.index_select(0, flat.clamp(min=0)).view(NC, Q, h)
        bias = self.word_bias.index_select(0, flat.clamp(min=0)).masked_fill(flat < 0, -torch.inf).view(NC, Q)
        return chunk_products(hs, words, bias, chunk_block, chunk_counts, per_block=hs.device.type == "cpu")

    def emission_dense(self, states: torch.Tensor) -> torch.Tensor:
        """states [C'] -> [C', V] logits of every word."""
        return self.emit_mlp(self.embed(states, "emit")) @ self.word_emb.T + self.word_bias


def _full(x: torch.Tensor) -> torch.Tensor:
    """Logits back to at least fp32 (from bf16 autocast products) before they are normalized."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _logsumexp_over_words(logits: torch.Tensor) -> torch.Tensor:
    """[NC, Q, n] -> [NC, n]: logsumexp over each chunk's words (dim 1), as a max-shifted sum of exponentials.
    torch.logsumexp over a middle dimension is a strided reduction, about 2x slower on a CPU (forward and
    backward of the dense run's [313, 32, 512]); the shift is a constant, so the gradient is the softmax."""
    top = inference.finite_or_zero(logits.detach().amax(dim=1, keepdim=True))
    total = (logits - top).exp().sum(dim=1)
    some = total > 0  # a column of -inf only gives -inf, and a zero gradient as torch.logsumexp does, not NaN
    return torch.where(some, torch.where(some, total, 1.0).log() + top.squeeze(1), -torch.inf)


def chunk_products(hs: torch.Tensor, words: torch.Tensor, bias: torch.Tensor, chunk_block: torch.Tensor,
                   chunk_counts: tuple[int, ...], per_block: bool) -> torch.Tensor:
    """hs [M, r, h] (each block's states), words [NC, Q, h] and bias [NC, Q] (chunks, each block's consecutive)
    -> [NC, Q, r] products of every chunk's words with its block's states, plus the words' biases: one batched
    product (``per_block`` False) or one [c Q, h] x [h, r] product per block of c chunks; the same numbers."""
    if not per_block:
        return torch.baddbmm(bias[..., None], words, hs[chunk_block].transpose(1, 2))
    (NC, Q, h), r = words.shape, hs.shape[1]
    # unbind, not hs[m]: each select's backward would zero-fill a whole [M, r, h] gradient (M of them a step)
    parts = [torch.addmm(b.reshape(-1, 1), w.reshape(-1, h), hm.T)
             for hm, w, b in zip(hs.unbind(0), words.split(list(chunk_counts)), bias.split(list(chunk_counts)))]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).view(NC, Q, r)


class ScalarParameterization(nn.Module):
    """Free logits: start [C], transition [C, C], emission [C, V] (Table 2, "- neural param")."""

    def __init__(self, cfg: HMMConfig, vocab_size: int, num_blocks: int):
        super().__init__()
        C = cfg.num_states
        self.start = nn.Parameter(torch.empty(C))
        self.transition = nn.Parameter(torch.empty(C, C))
        self.emission = nn.Parameter(torch.empty(C, vocab_size))
        if cfg.init == "kaiming":
            nn.init.kaiming_uniform_(self.transition)
            nn.init.kaiming_uniform_(self.emission)
            nn.init.uniform_(self.start, -(C**-0.5), C**-0.5)
        else:  # torch-default: free tables as nn.Embedding leaves them
            for table in (self.start, self.transition, self.emission):
                nn.init.normal_(table)

    def start_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.start[states]

    def transition_logits(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.transition[rows][:, cols]

    def emission_chunks(self, block_states: torch.Tensor, chunk_block: torch.Tensor,
                        chunk_words: torch.Tensor, chunk_counts: tuple[int, ...]) -> torch.Tensor:
        logits = self.emission[block_states[chunk_block][:, None, :], chunk_words.clamp(min=0)[:, :, None]]
        return logits.masked_fill((chunk_words < 0)[:, :, None], -torch.inf)

    def emission_dense(self, states: torch.Tensor) -> torch.Tensor:
        return self.emission[states]


# ---------------------------------------------------------------------------------------
# Transition distributions over the live states
# ---------------------------------------------------------------------------------------


def all_carried_states(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A carry's states [B, r] -> (ids [B r], where [B, r]: the position of each state in ids): every
    state as it is, with shapes fixed by the batch (no host read: a CUDA graph can capture it)."""
    return states.flatten(), torch.arange(states.numel(), device=states.device).view(states.shape)


def distinct_carried_states(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`all_carried_states`, each distinct state once: rows whose last words share a block carry
    the same states (1,024 states, M = 8, B = 16: 1,024 rows of the transition become at most 512; the
    fp32 step on real PTB 15-21 % shorter on a CPU, docs/cpu.md).  Reads the count back to the host."""
    return torch.unique(states, return_inverse=True)


def carried_states(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The carry's transition rows to compute: distinct on a CPU, all on a GPU (graph capture)."""
    return (distinct_carried_states if states.device.type == "cpu" else all_carried_states)(states)


def _prior_from(log_q: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """log_q [B, r], cols [B, r, n] log p(next | previous) -> [B, n] log p(next | carry)."""
    return torch.logsumexp(log_q[..., None] + cols, dim=1)


@dataclass
class DenseTransition:
    """log A [C', C'] as a matrix (rows: previous state, softmax over the live states).

    ``state_rows``: global state ids [R] -> [R, C'] log rows over the live states, for a carry
    whose states need not be live (training); None where every state is live (evaluation):
    positions are then global ids.
    """

    log_probs: torch.Tensor
    state_rows: Callable[[torch.Tensor], torch.Tensor] | None = None
    carry_in_table: ClassVar[bool] = False   # the edge from a carry goes through ``prior`` (see BlockTransition)

    def dense(self) -> torch.Tensor:
        return self.log_probs

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """global state ids [R] -> [R, C'] log rows over the live states."""
        return self.log_probs[ids] if self.state_rows is None else self.state_rows(ids)

    def edge_table(self, prev_pos: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """prev_pos, next_pos [B, S, n] live positions -> [B S, n, n]: each edge's block."""
        n = prev_pos.shape[-1]
        return self.log_probs[prev_pos.reshape(-1, n, 1), next_pos.reshape(-1, 1, n)]

    def carried_rows(self, carry: "Carry") -> torch.Tensor:
        """[B, r, C'] each row's carried states' log transition rows over the live states (training)."""
        ids, where = carried_states(carry.states)                                             # [U], [B, r]
        return self.state_rows(ids).index_select(0, where.flatten()).view(*where.shape, -1)

    def prior(self, carry: "Carry", next_pos: torch.Tensor) -> torch.Tensor:
        """[B, n]: the carried posterior pushed through the transition into the next word's states."""
        if self.state_rows is None:
            cols = self.log_probs[carry.states[..., None], next_pos[:, None, :]]
        else:  # whole rows, then columns: both gradients are row-wise adds, not a scatter of single entries
            rows = self.carried_rows(carry)
            cols = rows.gather(2, next_pos[:, None, :].expand(-1, rows.shape[1], -1))           # [B, r, n]
        return _prior_from(carry.log_q, cols)


@dataclass
class FactoredTransition:
    """log A[u, j] = P_u . Q_j - log Z_u, with nothing [C', C'] formed unless ``dense`` is called.

    ``prev`` P [C', h] and ``next`` Q [C', h] of the live states, already rounded to
    ``precision`` (the normalizer's operands); ``log_norm`` log Z [C'];
    ``embed_prev``: global state ids [...] -> [..., h] (P of any state, for the carry).
    """

    prev: torch.Tensor
    next: torch.Tensor
    log_norm: torch.Tensor
    embed_prev: Callable[[torch.Tensor], torch.Tensor]
    precision: str = "fp32"
    carry_in_table: ClassVar[bool] = False

    def dense(self) -> torch.Tensor:
        """[C', C'] log A (one C' x C' buffer)."""
        return (self.prev @ self.next.T).sub_(self.log_norm[:, None])

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """global state ids [R] -> [R, C'] log rows over the live states."""
        p = round_operand(self.embed_prev(ids), self.precision)
        return (p @ self.next.T).sub_(row_logsumexp(p, self.next, self.precision)[:, None])

    def edge_table(self, prev_pos: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """prev_pos, next_pos [B, S, n] live positions -> [B S, n, n] log A of each edge's block."""
        n = prev_pos.shape[-1]
        prev_pos, next_pos = prev_pos.reshape(-1, n), next_pos.reshape(-1, n)
        return torch.bmm(self.prev[prev_pos], self.next[next_pos].transpose(1, 2)) - self.log_norm[prev_pos][..., None]

    def prior(self, carry: "Carry", next_pos: torch.Tensor) -> torch.Tensor:
        """[B, n]: the carried posterior pushed through this batch's rows of the carried states
        (normalized over this batch's live states; the carried states need not be live)."""
        p = round_operand(self.embed_prev(carry.states), self.precision)             # [B, r, h]
        log_norm = row_logsumexp(p.flatten(0, 1), self.next, self.precision).view(carry.states.shape)
        cols = torch.bmm(p, self.next[next_pos].transpose(1, 2)) - log_norm[..., None]
        return _prior_from(carry.log_q, cols)


@dataclass
class BlockTransition:
    """Evaluation, brown / none: every block pair of log A, cached as a table the scans index.

    ``table`` [M^2 (+ M), k, k]: entry ``a M + b`` is block a's rows and block b's columns of log A;
    with ``<eos>`` resets, entry ``M^2 + b`` has every row equal to the start distribution over
    block b.  ``block_of_word`` [V] maps a word to its block.
    """

    table: torch.Tensor
    num_blocks: int
    block_of_word: torch.Tensor
    # every state is live, so a carried posterior is over the previous word's block, as in the table: the edge
    # from it is one more table read (the scan's first step), not a prior formed on its own
    carry_in_table: ClassVar[bool] = True

    @classmethod
    def from_dense(cls, log_a: torch.Tensor, log_start: torch.Tensor, num_blocks: int,
                   block_of_word: torch.Tensor, with_start: bool) -> "BlockTransition":
        M, k = num_blocks, len(log_a) // num_blocks
        blocks = log_a.view(M, k, M, k).transpose(1, 2).reshape(M * M, k, k)
        if with_start:
            blocks = torch.cat([blocks, log_start.view(M, 1, k).expand(M, k, k)])
        return cls(blocks.contiguous(), M, block_of_word)

    def dense(self) -> torch.Tensor:
        """[C, C] log A, reassembled (tests, inspection)."""
        M, k = self.num_blocks, self.table.shape[-1]
        return self.table[: M * M].view(M, M, k, k).transpose(1, 2).reshape(M * k, M * k)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dense()[ids]

    def index(self, prev_words: torch.Tensor, next_words: torch.Tensor, reset: torch.Tensor | None) -> torch.Tensor:
        """Which table entry each edge reads: [B, S] from the words before and after it."""
        M, nxt = self.num_blocks, self.block_of_word[next_words]
        index = self.block_of_word[prev_words] * M + nxt
        return index if reset is None else torch.where(reset, M * M + nxt, index)


@dataclass
class LiveBlockTransition(BlockTransition):
    """Training, brown / none, dense path: the block table of the live states' [C', C'] log A (entry
    a M + b: block a's k' live rows, block b's k' live columns; M^2 + b: the start distribution over
    block b, for ``<eos>`` resets), so an edge reads its block through the index rather than as a
    gathered copy (whose backward is a serial scatter-add on a CPU).  The carried posterior's states
    need not be live: the prior goes through ``carried`` (rows of any state over the live ones)."""

    carried: DenseTransition | None = None
    carry_in_table: ClassVar[bool] = False   # the carried states need not be live

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.carried.rows(ids)

    def dense(self) -> torch.Tensor:
        return self.carried.dense()

    def prior(self, carry: "Carry", next_words: torch.Tensor) -> torch.Tensor:
        rows = self.carried.carried_rows(carry)                                               # [B, r, C']
        if self.num_blocks > 1:  # the columns of the next word's block (one block: every column, in order)
            B, r, C = rows.shape
            cols = block_positions(self.block_of_word, next_words, C // self.num_blocks)        # [B, k]
            rows = rows.gather(2, cols[:, None, :].expand(B, r, -1))
        return _prior_from(carry.log_q, rows)


# ---------------------------------------------------------------------------------------
# Distributions over the live states, and scoring of windows
# ---------------------------------------------------------------------------------------


@dataclass
class ChunkEmission:
    """Block emissions as the chunks' word-major logits ``rows`` [NC Q, n] (rows of no word -inf) and each
    block's normalizer over its words ``log_norm`` [M, n]: log p(w | n-th live state of w's block) =
    rows[row[w], n] - log_norm[block[w], n].  A batch reads its tokens' rows only: the [V, n] table of log
    probabilities is never formed, nor its full-size gradient scattered back into the chunks."""

    rows: torch.Tensor
    log_norm: torch.Tensor
    row: torch.Tensor    # [V]
    block: torch.Tensor  # [V]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1)
        out = self.rows.index_select(0, self.row[flat]) - self.log_norm.index_select(0, self.block[flat])
        return out.view(*x.shape, out.shape[-1])

    def table(self) -> torch.Tensor:
        return self(torch.arange(len(self.row), device=self.row.device))


@dataclass
class TableEmission:
    """Emissions as the [V, n] table of log probabilities (the uniform constraint)."""

    log_probs: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_probs[x]

    def table(self) -> torch.Tensor:
        return self.log_probs


@dataclass
class Carry:
    """The filtered posterior at the end of a window: ``log_q`` [B, n] over global ``states`` [B, n];
    ``last_word`` [B] the window's last word; ``after_eos`` [B]: it was ``<eos>``."""

    states: torch.Tensor
    log_q: torch.Tensor
    last_word: torch.Tensor
    after_eos: torch.Tensor


@dataclass
class HMMParams:
    """Normalized log-distributions over the live states of one batch (or of evaluation)."""

    live: Live
    log_start: torch.Tensor   # [C']
    transition: DenseTransition | FactoredTransition | BlockTransition
    emission: ChunkEmission | TableEmission  # (x [...]) -> [..., n] log p(x | x's n-th live state)

    @property
    def log_emit(self) -> torch.Tensor:
        """[V, n] log emission table (formed on demand: tests, inspection)."""
        return self.emission.table()

    @property
    def log_trans(self) -> torch.Tensor:
        """[C', C'] log transition matrix (formed on demand: tests, inspection)."""
        return self.transition.dense()

    def trans_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """global state ids [R] -> [R, C'] log transition rows over the live states."""
        return self.transition.rows(ids)


class VLNHMM(nn.Module):
    """HMM language model; ``forward(x, mask, carry)`` returns (log p of each row [B], carry).

    ``lean_transition``: where exact (neural parameterization, no transition dropout) build the
    transition from its factors and row normalizers (see the module docstring); False forms
    the dense log_softmax in training too (the reference, for tests and benchmarks).
    ``precision``: the normalizer's operand format, "fp32" | "tf32" | "bf16" (hmm.normalizer).
    """

    def __init__(self, cfg: HMMConfig, vocab_size: int, clusters: np.ndarray | None, eos_id: int,
                 seed: int = 0, scan=inference.TorchScan, lean_transition: bool = True,
                 precision: str = "fp32"):
        super().__init__()
        self.cfg = cfg
        self.eos_id = eos_id
        self.seed = seed
        self.scan = scan
        self.lean_transition = lean_transition
        self.precision = precision
        self.structure = Structure(cfg, clusters, vocab_size, seed)
        param_cls = NeuralParameterization if cfg.neural else ScalarParameterization
        self.param = param_cls(cfg, vocab_size, self.structure.num_blocks)
        self._generator: torch.Generator | None = None
        self._cache: tuple[tuple, HMMParams] | None = None
        # a training step has no host reads, so it can be captured as a CUDA graph, unless its scans read back
        self.capturable = getattr(scan, "capturable", True)
        self.matmul_dtype: torch.dtype | None = None  # bf16: the training step's MLP and logit products

    def low_precision(self):
        """Autocast to ``matmul_dtype`` for the MLPs and the logits' products of a training step (a CPU with
        native bf16, pipeline.training.precision); the logits come back fp32 before any normalizer.
        Evaluation, and the factored transition (its own operand ``precision``), are never affected."""
        on = self.training and self.matmul_dtype is not None
        return torch.autocast(self.structure.device.type, dtype=self.matmul_dtype, enabled=on)

    @property
    def transition_path(self) -> str:
        """The training step's transition as built: "factored" (factors and row normalizers) or "dense"."""
        exact = self.cfg.neural and self.cfg.transition_dropout == 0
        return "factored" if self.lean_transition and exact else "dense"

    @property
    def generator(self) -> torch.Generator:
        """The dropout draws' generator, on the model's device (its state is checkpointed)."""
        device = self.structure.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device).manual_seed(self.seed)
        return self._generator

    # -- building the distributions -------------------------------------------------------

    def emission(self, live: Live) -> "ChunkEmission | TableEmission":
        """The log emission of each word from its n live states, as the chunks' logits and their blocks'
        normalizers (brown / none) or as a [V, n] table (uniform)."""
        s = self.structure
        if s.constraint == "uniform":
            V = len(s.word_states)
            logits = self.param.emission_dense(live.states)                                # [C', V]
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            allowed[s.word_states, torch.arange(V, device=logits.device)[:, None]] = True
            log_o = logits.masked_fill(~allowed, -torch.inf).log_softmax(dim=-1)
            return TableEmission(log_o.T.gather(1, s.word_states))
        with self.low_precision():
            logits = self.param.emission_chunks(live.states.view(s.num_blocks, live.per_block), s.chunk_block,
                                                s.chunk_words, s.chunk_counts)                # [NC, Q, n]
            logits = _full(logits)
        chunk_lse = _logsumexp_over_words(logits)                                          # [NC, n]
        rows = logits.flatten(0, 1)                                                        # [NC Q, n]
        per_block = chunk_lse[s.block_chunks.clamp(min=0)].masked_fill((s.block_chunks < 0)[..., None], -torch.inf)
        return ChunkEmission(rows, per_block.logsumexp(dim=1), s.word_row, s.block_of_word)  # log_norm [M, n]

    def _transition_rows(self, rows: torch.Tensor, live: Live, drop: torch.Tensor | None = None) -> torch.Tensor:
        with self.low_precision():
            logits = _full(self.param.transition_logits(rows, live.states))
        if drop is not None:
            logits = logits.masked_fill(drop, -torch.inf)
        return logits.log_softmax(dim=-1)

    def _transition(self, live: Live, training: bool, log_start: torch.Tensor):
        """Factors in training where exact and ``lean_transition``; else (and at evaluation) dense."""
        drop = None
        if training and self.cfg.transition_dropout > 0:
            # one row per state (global id) so the carry's rows get the same mask as the window's
            u = torch.rand(self.cfg.num_states, len(live.states), generator=self.generator, device=live.states.device)
            drop = u < self.cfg.transition_dropout
        if self.lean_transition and self.cfg.neural and drop is None:
            with record_function("vlnhmm.mlp"):
                p = round_operand(self.param.transition_prev(live.states), self.precision)
                q = round_operand(self.param.transition_next(live.states), self.precision)
            with record_function("vlnhmm.normalizer"):
                factored = FactoredTransition(p, q, row_logsumexp(p, q, self.precision), self.param.transition_prev,
                                              self.precision)
                if training:
                    return factored
                log_trans = factored.dense()
        else:
            with record_function("vlnhmm.normalizer"):
                log_trans = self._transition_rows(live.states, live, None if drop is None else drop[live.states])
            if training:
                dense = DenseTransition(log_trans, lambda ids: self._transition_rows(
                    ids, live, None if drop is None else drop[ids]))
                if self.cfg.constraint == "uniform":
                    return dense
                blocks = BlockTransition.from_dense(log_trans, log_start, self.structure.num_blocks,
                                                    self.structure.block_of_word, self.cfg.eos_reset != "none")
                return LiveBlockTransition(blocks.table, blocks.num_blocks, blocks.block_of_word, dense)
        if self.cfg.constraint == "uniform":
            return DenseTransition(log_trans)
        return BlockTransition.from_dense(log_trans, log_start, self.structure.num_blocks,
                                          self.structure.block_of_word, self.cfg.eos_reset == "always")

    def build(self, training: bool) -> HMMParams:
        keep = self.cfg.kept_per_block if training else self.cfg.states_per_block
        live = sample_live(self.structure, keep, self.generator if training else None)
        with record_function("vlnhmm.mlp"):
            with self.low_precision():
                log_start = _full(self.param.start_logits(live.states))
            log_start = log_start.log_softmax(dim=-1)
        transition = self._transition(live, training, log_start)
        with record_function("vlnhmm.emission"):
            emission = self.emission(live)
        return HMMParams(live, log_start, transition, emission)

    def clear_cache(self) -> None:
        """Forget the cached evaluation parameters."""
        self._cache = None

    def train(self, mode: bool = True) -> "VLNHMM":
        """Entering training mode forgets the cached evaluation parameters: optimizers that update
        weights in place without bumping their version counters (fused AdamW, replayed CUDA graphs)
        would otherwise leave a stale cache."""
        if mode:
            self.clear_cache()
        return super().train(mode)

    def prepare_evaluation(self) -> None:
        """Build (and cache) the evaluation parameters now, e.g. before timing evaluation batches."""
        self.params_for(False)

    def params_for(self, training: bool) -> HMMParams:
        """Fresh parameters in training; cached ones at evaluation until a weight changes."""
        if training:
            return self.build(True)
        version = tuple(p._version for p in self.parameters()) + tuple(id(p) for p in self.parameters())
        if self._cache is None or self._cache[0] != version:
            self._cache = None  # free the old cache before building the new one
            with torch.no_grad():
                self._cache = (version, self.build(False))
        return self._cache[1]

    # -- scoring -----------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> Carry | None:
        return None

    def potentials(self, p: HMMParams, x: torch.Tensor, mask: torch.Tensor, carry: Carry | None,
                   reset: bool, reset_between: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The window in block form (see :mod:`hmm.inference`): init [B, n], table [U, n, n],
        index [B, T-1] (-1 after a row's last token) and emit [B, T-1, n]; at evaluation with a carry,
        init is the carried posterior and index [B, T] and emit [B, T, n] start with the edge into x[:, 0].
        ``reset``: edges out of ``<eos>`` inside the window use the start distribution; ``reset_between``:
        so does the edge from the previous window's last word when it was ``<eos>``."""
        B, T = x.shape
        ws = p.live.positions(x)                       # [B, T, n] positions into the live set
        emit = p.emission(x)                           # [B, T, n]
        start = p.log_start[ws]                        # [B, T, n]
        after_eos = (x[:, :-1] == self.eos_id) if reset else None
        if isinstance(p.transition, BlockTransition):
            table, index = p.transition.table, p.transition.index(x[:, :-1], x[:, 1:], after_eos)
        else:
            table = p.transition.edge_table(ws[:, :-1], ws[:, 1:])          # [B (T-1), n, n]
            if reset:  # after <eos> the next state is drawn from the start distribution
                n = ws.shape[-1]
                table = torch.where(after_eos.reshape(-1, 1, 1), start[:, 1:].reshape(-1, 1, n), table)
            index = torch.arange(B * (T - 1), device=x.device).view(B, T - 1)
        index = index.masked_fill(~mask[:, 1:], -1)
        if carry is None:
            return start[:, 0] + emit[:, 0], table, index, emit[:, 1:]
        if p.transition.carry_in_table:
            # the edge from the carried posterior is the scan's first step; its own logsumexp over a gathered
            # [B, k, k] block cost more than the window
            first = p.transition.index(carry.last_word[:, None], x[:, :1], carry.after_eos[:, None] if reset_between
                                       else None).masked_fill(~mask[:, :1], -1)
            return carry.log_q, table, torch.cat([first, index], dim=1), emit
        prior = p.transition.prior(carry, x[:, 0] if isinstance(p.transition, BlockTransition) else ws[:, 0])
        if reset_between:
            prior = torch.where(carry.after_eos[:, None], start[:, 0], prior)
        return prior + emit[:, 0], table, index, emit[:, 1:]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, carry: Carry | None, per_token: bool = False):
        """x [B, T] int64, mask [B, T] bool (every row of a stream's first window has a token;
        padding only at the end of a row) -> (log p of each row [B], carry).

        ``per_token`` (no gradient): log p [B, T] of each token given the stream so far (0 at padding):
        the differences of the prefix log-partitions logsumexp(alpha[:, t]); a row's sum is its log Z."""
        mode = self.cfg.eos_reset
        reset = mode == "always" or (mode.startswith("train") and self.training)
        reset_between = mode == "always" or (mode == "train-in-and-between-windows" and self.training)
        p = self.params_for(self.training)
        with record_function("vlnhmm.potentials"):
            init, table, index, emit = self.potentials(p, x, mask, carry, reset, reset_between)
        if per_token:
            with torch.no_grad():
                alpha = self.scan.forward(init.contiguous(), table.contiguous(), index.to(torch.int32).contiguous(),
                                          emit.contiguous())
            prefix = alpha[:, -x.shape[1]:].logsumexp(dim=-1).double()         # [B, T]: after each token
            log_z = torch.diff(prefix, dim=1, prepend=prefix.new_zeros(len(prefix), 1)).masked_fill(~mask, 0.0)
            last_alpha = alpha[:, -1]
        else:
            log_z, last_alpha = inference.log_partition_blocks(init, table, index, emit, self.scan)
        lengths = mask.sum(dim=1)
        has_token = lengths > 0
        if not per_token:
            log_z = torch.where(has_token, log_z, torch.zeros_like(log_z))
        last_words = x.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
        last_states = p.live.states[p.live.positions(last_words)]  # [B, n] global ids
        new = Carry(last_states, last_alpha.log_softmax(dim=-1).detach(), last_words, last_words == self.eos_id)
        if carry is not None:  # rows without tokens keep their carry
            keep = ~has_token
            new = Carry(*(torch.where(keep.view(-1, *[1] * (a.dim() - 1)), a, b)
                          for a, b in zip((carry.states, carry.log_q, carry.last_word, carry.after_eos),
                                          (new.states, new.log_q, new.last_word, new.after_eos))))
        return log_z, new

