"""The very large neural HMM (VLNHMM): blocked emissions, neural parameterization, state dropout.

States: ``C = num_states``.  Under the ``brown`` constraint the vocabulary is split into
``M`` blocks (Brown clusters) and block ``m`` owns states ``[m k, (m+1) k)``, ``k = C / M``;
a word can only be emitted by the ``k`` states of its block (``none`` is one block holding
every word; ``uniform`` gives each word its own random ``n`` states).

Each training batch draws the live states (state dropout keeps ``k'`` states per block), builds
start, transition and emission distributions over the live states only, and scores the
window exactly (:mod:`hmm.inference`).  Evaluation uses all states with parameters built
once and cached until the weights change.  Shapes: ``B`` streams, ``T`` steps, ``n`` live
states per step, ``V`` words, ``h`` hidden size, ``C'`` live states in total.

The transition matrix is the costly part (C'^2 h, C'^2 memory).  In the neural
parameterization its logits are P Q^T (P: previous-state side [C', h], Q: next-state side),
so training keeps only the factors and the row normalizers log Z = logsumexp_j P Q^T
(:func:`hmm.normalizer.row_logsumexp`, by column tiles) and forms just the [n, n] blocks a
batch reads: log A[u, j] = P_u . Q_j - log Z_u, exactly.  The scalar parameterization and
transition dropout (a dense mask) keep the dense matrix; evaluation forms it once and caches it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmm import inference
from hmm.config import HMMConfig
from hmm.normalizer import row_logsumexp


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

    ``block_of_word`` [V]: the word's block (brown/none).  ``block_words`` [M, W]: each
    block's words padded with -1.  ``word_states`` [V, n] (uniform only): each word's states.
    """

    def __init__(self, cfg: HMMConfig, clusters: np.ndarray | None, vocab_size: int, seed: int):
        super().__init__()
        self.constraint = cfg.constraint
        self.num_states = cfg.num_states
        self.k = cfg.states_per_block
        cpu = torch.device("cpu")  # index tables are built on the CPU (also under a meta device context)
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
        block = torch.as_tensor(clusters, dtype=torch.long, device=cpu)
        sizes = torch.bincount(block, minlength=cfg.num_clusters)
        order = torch.argsort(block, stable=True)  # words grouped by block, vocabulary order inside
        slot = torch.arange(vocab_size, device=cpu) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
        block_words = torch.full((cfg.num_clusters, int(sizes.max())), -1, dtype=torch.long, device=cpu)
        block_words[block[order], slot] = order
        pos = torch.empty(vocab_size, dtype=torch.long, device=cpu)
        pos[order] = slot
        self.register_buffer("block_of_word", block)
        self.register_buffer("word_slot", pos)      # the word's column in block_words
        self.register_buffer("block_words", block_words)

    @property
    def num_blocks(self) -> int:
        return 1 if self.constraint == "uniform" else self.block_words.shape[0]


@dataclass
class Live:
    """The states in use for one batch.

    ``states`` [C'] global ids; ``per_block`` k' (brown/none: block m's live states are
    ``states[m k' : (m+1) k']``); ``word_states`` [V, n] positions into ``states``.
    """

    states: torch.Tensor
    word_states: torch.Tensor
    per_block: int


def sample_live(structure: Structure, keep: int, generator: torch.Generator | None, device) -> Live:
    """Keep ``keep`` of the ``k`` states of every block, uniformly without replacement (all if
    ``generator`` is None).  Uniform-constraint models keep every state."""
    k, C = structure.k, structure.num_states
    if structure.constraint == "uniform":
        return Live(torch.arange(C, device=device), structure.word_states, k)
    M = structure.num_blocks
    if generator is None or keep == k:
        local = torch.arange(k).expand(M, k)
        keep = k
    else:
        local = torch.rand(M, k, generator=generator).argsort(dim=1)[:, :keep].sort(dim=1).values
    states = (local + k * torch.arange(M)[:, None]).flatten().to(device)
    word_states = structure.block_of_word[:, None] * keep + torch.arange(keep, device=device)
    return Live(states, word_states, keep)


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
        for p in self.parameters():  # paper A.3: Kaiming uniform for all weights
            if p.dim() > 1:
                nn.init.kaiming_uniform_(p)

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

    def emission_logits(self, states: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """states [G, r], words [G, w] (ids >= 0) -> [G, r, w] logits phi[state, word]."""
        hs = self.emit_mlp(self.embed(states, "emit"))
        return hs @ self.word_emb[words].transpose(1, 2) + self.word_bias[words][:, None, :]


class ScalarParameterization(nn.Module):
    """Free logits: start [C], transition [C, C], emission [C, V] (Table 2, "- neural param")."""

    def __init__(self, cfg: HMMConfig, vocab_size: int, num_blocks: int):
        super().__init__()
        C = cfg.num_states
        self.start = nn.Parameter(torch.empty(C))
        self.transition = nn.Parameter(torch.empty(C, C))
        self.emission = nn.Parameter(torch.empty(C, vocab_size))
        nn.init.kaiming_uniform_(self.transition)
        nn.init.kaiming_uniform_(self.emission)
        nn.init.uniform_(self.start, -(C**-0.5), C**-0.5)

    def start_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.start[states]

    def transition_logits(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.transition[rows][:, cols]

    def emission_logits(self, states: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        return self.emission[states[:, :, None], words[:, None, :]]


# ---------------------------------------------------------------------------------------
# Transition distributions over the live states: dense matrix or factors
# ---------------------------------------------------------------------------------------


@dataclass
class DenseTransition:
    """log A [C', C'] as a matrix (rows: previous state, softmax over the live states).

    ``state_rows``: global state ids [R] -> [R, C'] log rows over the live states, for a carry
    whose states need not be live (training); None where every state is live (evaluation):
    positions are then global ids.
    """

    log_probs: torch.Tensor
    state_rows: Callable[[torch.Tensor], torch.Tensor] | None = None

    def dense(self) -> torch.Tensor:
        return self.log_probs

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """global state ids [R] -> [R, C'] log rows over the live states."""
        return self.log_probs[ids] if self.state_rows is None else self.state_rows(ids)

    def block(self, prev_pos: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """prev_pos [..., r], next_pos [..., n] live positions -> [..., r, n] log A[prev, next]."""
        return self.log_probs[prev_pos[..., :, None], next_pos[..., None, :]]

    def from_states(self, states: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """states [B, r] global ids, next_pos [B, n] live positions -> [B, r, n] log p(next | state)."""
        if self.state_rows is None:
            return self.block(states, next_pos)
        rows = self.state_rows(states.flatten()).view(*states.shape, -1)  # [B, r, C']
        return rows.gather(2, next_pos[:, None, :].expand(-1, states.shape[1], -1))


@dataclass
class FactoredTransition:
    """log A[u, j] = P_u . Q_j - log Z_u, with nothing [C', C'] formed unless ``dense`` is called.

    ``prev`` P [C', h] and ``next`` Q [C', h] of the live states; ``log_norm`` log Z [C'];
    ``embed_prev``: global state ids [...] -> [..., h] (P of any state, for the carry).
    """

    prev: torch.Tensor
    next: torch.Tensor
    log_norm: torch.Tensor
    embed_prev: Callable[[torch.Tensor], torch.Tensor]

    def dense(self) -> torch.Tensor:
        """[C', C'] log A (one C' x C' buffer)."""
        return self._all_columns(self.prev, self.log_norm)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """global state ids [R] -> [R, C'] log rows over the live states."""
        p = self.embed_prev(ids)
        return self._all_columns(p, row_logsumexp(p, self.next))

    def block(self, prev_pos: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """prev_pos [..., r], next_pos [..., n] live positions -> [..., r, n] log A[prev, next].

        Each distinct pair of position sets (a pair of blocks under brown) is computed once.
        """
        r = prev_pos.shape[-1]
        pairs, which = torch.unique(torch.cat([prev_pos, next_pos], dim=-1).flatten(0, -2), dim=0,
                                    return_inverse=True)                  # [U, r + n], [N]
        entries = self._entries(self.prev[pairs[:, :r]], self.log_norm[pairs[:, :r]], pairs[:, r:])
        return entries[which].view(*prev_pos.shape, next_pos.shape[-1])

    def from_states(self, states: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """states [B, r] global ids, next_pos [B, n] live positions -> [B, r, n] log p(next | state)."""
        p = self.embed_prev(states)                                        # [B, r, h]
        log_norm = row_logsumexp(p.flatten(0, 1), self.next).view(states.shape)
        return self._entries(p, log_norm, next_pos)

    def _all_columns(self, p: torch.Tensor, log_norm: torch.Tensor) -> torch.Tensor:
        """p [R, h], log_norm [R] -> [R, C'] (normalized in place)."""
        return (p @ self.next.T).sub_(log_norm[:, None])

    def _entries(self, p: torch.Tensor, log_norm: torch.Tensor, next_pos: torch.Tensor) -> torch.Tensor:
        """p [..., r, h], log_norm [..., r], next_pos [..., n] -> [..., r, n]."""
        return p @ self.next[next_pos].transpose(-1, -2) - log_norm[..., None]


# ---------------------------------------------------------------------------------------
# Distributions over the live states, and scoring of windows
# ---------------------------------------------------------------------------------------


@dataclass
class Carry:
    """The filtered posterior at the end of a window: ``log_q`` [B, n] over global ``states`` [B, n];
    ``after_eos`` [B]: the window ended with ``<eos>``."""

    states: torch.Tensor
    log_q: torch.Tensor
    after_eos: torch.Tensor


@dataclass
class HMMParams:
    """Normalized log-distributions over the live states of one batch (or of evaluation)."""

    live: Live
    log_start: torch.Tensor   # [C']
    transition: DenseTransition | FactoredTransition
    log_emit: torch.Tensor    # [V, n]  log p(word | the word's n-th live state)

    @property
    def log_trans(self) -> torch.Tensor:
        """[C', C'] log transition matrix (formed on demand from factors: tests, inspection)."""
        return self.transition.dense()

    def trans_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """global state ids [R] -> [R, C'] log transition rows over the live states."""
        return self.transition.rows(ids)


class VLNHMM(nn.Module):
    """HMM language model; ``forward(x, mask, carry)`` returns (log p of each row [B], carry).

    ``lean_transition``: where exact (neural parameterization, no transition dropout) build the
    transition from its factors and tiled normalizers (see the module docstring); False forms
    the dense log_softmax in training too (the reference, for tests and benchmarks).
    """

    def __init__(self, cfg: HMMConfig, vocab_size: int, clusters: np.ndarray | None, eos_id: int,
                 seed: int = 0, scan=inference.TorchScan, lean_transition: bool = True):
        super().__init__()
        self.cfg = cfg
        self.eos_id = eos_id
        self.scan = scan
        self.lean_transition = lean_transition
        self.structure = Structure(cfg, clusters, vocab_size, seed)
        param_cls = NeuralParameterization if cfg.neural else ScalarParameterization
        self.param = param_cls(cfg, vocab_size, self.structure.num_blocks)
        self.generator = torch.Generator().manual_seed(seed)  # state dropout draws (checkpointed)
        self._cache: tuple[tuple, HMMParams] | None = None


    # -- building the distributions -------------------------------------------------------

    def _emission(self, live: Live) -> torch.Tensor:
        """[V, n] log emission of each word from its n live states."""
        s = self.structure
        if s.constraint == "uniform":
            logits = self.param.emission_logits(live.states[None], torch.arange(len(s.word_states), device=live.states.device)[None])[0]
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            allowed[s.word_states, torch.arange(len(s.word_states), device=logits.device)[:, None]] = True
            log_o = logits.masked_fill(~allowed, -torch.inf).log_softmax(dim=-1)
            return log_o.T.gather(1, s.word_states)
        M, keep = s.num_blocks, live.per_block
        words = s.block_words
        logits = self.param.emission_logits(live.states.view(M, keep), words.clamp(min=0))
        log_o = logits.masked_fill((words < 0)[:, None, :], -torch.inf).log_softmax(dim=-1)  # [M, k', W]
        return log_o[s.block_of_word, :, s.word_slot]  # [V, k']

    def _transition_rows(self, rows: torch.Tensor, live: Live, drop: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.param.transition_logits(rows, live.states)
        if drop is not None:
            logits = logits.masked_fill(drop, -torch.inf)
        return logits.log_softmax(dim=-1)

    def _transition(self, live: Live, training: bool) -> DenseTransition | FactoredTransition:
        """Factors in training where exact and ``lean_transition``; else (and at evaluation) dense."""
        drop = None
        if training and self.cfg.transition_dropout > 0:
            device = live.states.device
            # drawn on the device, seeded from the (checkpointed) CPU generator; one row per state
            # (global id) so the carry's rows get the same mask as the window's transitions
            g = torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
            drop = torch.rand(self.cfg.num_states, len(live.states), generator=g, device=device)
            drop = drop < self.cfg.transition_dropout
        if self.lean_transition and self.cfg.neural and drop is None:
            p, q = self.param.transition_prev(live.states), self.param.transition_next(live.states)
            factored = FactoredTransition(p, q, row_logsumexp(p, q), self.param.transition_prev)
            if training:
                return factored
            log_trans = factored.dense()
        else:
            log_trans = self._transition_rows(live.states, live, None if drop is None else drop[live.states])
            if training:
                return DenseTransition(log_trans, lambda ids: self._transition_rows(
                    ids, live, None if drop is None else drop[ids]))
        return DenseTransition(log_trans)

    def build(self, training: bool) -> HMMParams:
        device = next(self.structure.buffers()).device
        keep = self.cfg.kept_per_block if training else self.cfg.states_per_block
        live = sample_live(self.structure, keep, self.generator if training else None, device)
        transition = self._transition(live, training)
        log_start = self.param.start_logits(live.states).log_softmax(dim=-1)
        return HMMParams(live, log_start, transition, self._emission(live))

    def params_for(self, training: bool) -> HMMParams:
        """Fresh parameters in training; cached ones at evaluation until a weight changes."""
        if training:
            return self.build(True)
        version = tuple(p._version for p in self.parameters()) + tuple(id(p) for p in self.parameters())
        if self._cache is None or self._cache[0] != version:
            with torch.no_grad():
                self._cache = (version, self.build(False))
        return self._cache[1]

    # -- scoring -----------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> Carry | None:
        return None

    def potentials(self, p: HMMParams, x: torch.Tensor, mask: torch.Tensor, carry: Carry | None,
                   reset: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """init [B, n] and edges [B, T-1, n, n] of one window (see :mod:`hmm.inference`)."""
        ws = p.live.word_states[x]                     # [B, T, n] positions into the live set
        emit = p.log_emit[x].masked_fill(~mask[..., None], 0.0)
        trans = p.transition.block(ws[:, :-1], ws[:, 1:])
        start = p.log_start[ws]                        # [B, T, n]
        if reset:  # after <eos> the next state is drawn from the start distribution
            after_eos = (x[:, :-1] == self.eos_id)[..., None, None]
            trans = torch.where(after_eos, start[:, 1:, None, :], trans)
        n = ws.shape[-1]
        identity = torch.full((n, n), -torch.inf, device=x.device).fill_diagonal_(0.0)
        trans = torch.where(mask[:, 1:, None, None], trans, identity)
        if carry is None:
            prior = start[:, 0]
        else:
            cols = p.transition.from_states(carry.states, ws[:, 0])    # [B, n_prev, n]
            prior = torch.logsumexp(carry.log_q[..., None] + cols, dim=1)
            if reset:
                prior = torch.where(carry.after_eos[:, None], start[:, 0], prior)
        return prior + emit[:, 0], trans + emit[:, 1:, None, :]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, carry: Carry | None):
        reset = self.cfg.eos_reset == "always" or (self.cfg.eos_reset == "train" and self.training)
        p = self.params_for(self.training)
        init, edges = self.potentials(p, x, mask, carry, reset)
        log_z, last_alpha = inference.log_partition(init, edges, self.scan)
        lengths = mask.sum(dim=1)
        has_token = lengths > 0
        log_z = torch.where(has_token, log_z, torch.zeros_like(log_z))
        last = (lengths - 1).clamp(min=0)
        last_words = x[torch.arange(len(x)), last]
        last_states = p.live.states[p.live.word_states[last_words]]  # [B, n] global ids
        new = Carry(last_states, last_alpha.log_softmax(dim=-1).detach(), last_words == self.eos_id)
        if carry is not None:  # rows without tokens keep their carry
            keep = ~has_token
            new = Carry(torch.where(keep[:, None], carry.states, new.states),
                        torch.where(keep[:, None], carry.log_q, new.log_q),
                        torch.where(keep, carry.after_eos, new.after_eos))
        elif not has_token.all():
            raise ValueError("a stream with no token in its first window")
        return log_z, new
