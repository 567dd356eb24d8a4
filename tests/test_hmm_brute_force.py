"""The VLNHMM against brute force: every state path of tiny models enumerated explicitly."""

import numpy as np
import pytest
import torch

from hmm import inference
from hmm.config import HMMConfig
from hmm.matmul_scan import MatmulScan
from hmm.model import VLNHMM, sample_live

V, EOS = 7, 6
CLUSTERS = {3: np.array([0, 0, 1, 1, 2, 2, 0]), 1: np.zeros(V, dtype=np.int64)}

VARIANTS = {
    "brown": dict(num_states=6, num_clusters=3, state_dropout=0.0),
    "brown-dropout": dict(num_states=12, num_clusters=3, state_dropout=0.5),
    "brown-factored": dict(num_states=12, num_clusters=3, state_dropout=0.5, state_repr="factored"),
    "brown-scalar": dict(num_states=12, num_clusters=3, state_dropout=0.5, neural=False),
    "none": dict(num_states=4, num_clusters=1, constraint="none", state_dropout=0.5),
    "uniform": dict(num_states=6, num_clusters=1, constraint="uniform", states_per_word=3, state_dropout=0.0),
    "uniform-transdrop": dict(num_states=6, num_clusters=1, constraint="uniform", states_per_word=4,
                              state_dropout=0.0, transition_dropout=0.25),
    "brown-eos-reset": dict(num_states=6, num_clusters=3, state_dropout=0.0, eos_reset="always"),
    "brown-no-reset": dict(num_states=6, num_clusters=3, state_dropout=0.0, eos_reset="none"),
}


def resets(model) -> bool:
    """Whether edges out of <eos> inside a window use the start distribution (the model's mode)."""
    mode = model.cfg.eos_reset
    return mode == "always" or (mode.startswith("train") and model.training)


def make(name, seed=0, scan=inference.TorchScan, lean=True):
    cfg = HMMConfig(hidden=8, **VARIANTS[name])
    torch.manual_seed(seed)
    model = VLNHMM(cfg, V, CLUSTERS.get(cfg.num_clusters), eos_id=EOS, seed=seed, scan=scan,
                   lean_transition=lean).double()
    return model


def dense(params):
    """Explicit pi [C'], A [C', C'], O [C', V] from the model's distributions (zeros outside blocks)."""
    n_live = len(params.live.states)
    log_o = torch.full((n_live, V), -torch.inf, dtype=params.log_emit.dtype)
    for x in range(V):
        log_o[params.live.word_states[x], x] = params.log_emit[x]
    return params.log_start, params.log_trans, log_o


def brute_force(log_prior, log_a, log_o, log_start, xs, reset, no_reset_at=()):
    """log sum over every state path of p(x, z); log_prior [C'] is the distribution of z_1.
    ``reset``: z_t after an <eos> is drawn from the start distribution, except at the
    positions ``no_reset_at`` (window boundaries under the released semantics).

    All C'^T paths at once: paths [P, T] (itertools.product order), one score per path."""
    C, T = len(log_prior), len(xs)
    paths = torch.arange(C ** T)[:, None] // C ** torch.arange(T - 1, -1, -1) % C  # path p: p's digits in base C
    x = torch.tensor(xs)
    score = log_prior[paths[:, 0]] + log_o[paths[:, 0], x[0]]
    for t in range(1, T):
        reset_here = reset and xs[t - 1] == EOS and t not in no_reset_at
        step = log_start[paths[:, t]] if reset_here else log_a[paths[:, t - 1], paths[:, t]]
        score = score + step + log_o[paths[:, t], x[t]]
    return torch.logsumexp(score, dim=0)


def window(seed, lengths, T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (len(lengths), T), generator=g)
    x[0, 1] = EOS
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_distributions_are_normalized_and_blocked(name, training):
    model = make(name)
    model.train(training)
    p = model.params_for(training)
    log_start, log_a, log_o = dense(p)
    one = torch.tensor(1.0, dtype=torch.float64)
    assert torch.allclose(log_start.exp().sum(), one)
    assert torch.allclose(log_a.exp().sum(-1), torch.ones(len(log_a), dtype=torch.float64))
    assert torch.allclose(log_o.exp().sum(-1), torch.ones(len(log_o), dtype=torch.float64))
    cfg = model.cfg
    if cfg.constraint != "uniform":
        kept = cfg.kept_per_block if training else cfg.states_per_block
        assert len(p.live.states) == cfg.num_clusters * kept
        blocks = p.live.states // cfg.states_per_block
        assert (torch.bincount(blocks) == kept).all()
        allowed = blocks[:, None] == torch.as_tensor(CLUSTERS[cfg.num_clusters])[None, :]
        assert torch.isinf(log_o[~allowed]).all()
    else:  # every state is live (no state dropout); each word is emitted by its states_per_word states only
        assert len(p.live.states) == cfg.num_states
        assert (torch.isfinite(log_o).sum(0) == cfg.states_per_word).all()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_window_log_likelihood_equals_brute_force(name, training):
    model = make(name)
    model.train(training)
    gen_state = model.generator.get_state()
    x, mask = window(1, [5, 3, 1], 5)
    logp, _ = model(x, mask, None)
    model.generator.set_state(gen_state)  # the same dropout draw again
    p = model.params_for(training)
    log_start, log_a, log_o = dense(p)
    reset = resets(model)
    for b in range(len(x)):
        xs = x[b, : int(mask[b].sum())].tolist()
        expected = brute_force(log_start, log_a, log_o, log_start, xs, reset)
        assert torch.allclose(logp[b], expected, atol=1e-9), (b, logp[b].item(), expected.item())


@pytest.mark.parametrize("name", ["brown", "brown-dropout", "uniform", "brown-eos-reset", "none"])
def test_carried_state_across_two_windows_is_exact_at_evaluation(name):
    model = make(name).eval()
    x, mask = window(2, [3, 3], 3)   # 12 live states at evaluation: 12^5 paths for the longest row
    x2, mask2 = window(3, [2, 0], 2)
    if name == "brown-eos-reset":  # an <eos> ending window 1 (the reset crosses the boundary) and one starting window 2
        x[0, 2], x2[0, 0] = EOS, EOS
    lp1, carry = model(x, mask, None)
    lp2, carry2 = model(x2, mask2, carry)
    log_start, log_a, log_o = dense(model.params_for(False))
    reset = resets(model)
    for b in range(2):
        xs = x[b, : int(mask[b].sum())].tolist() + x2[b, : int(mask2[b].sum())].tolist()
        expected = brute_force(log_start, log_a, log_o, log_start, xs, reset)
        assert torch.allclose(lp1[b] + lp2[b], expected, atol=1e-9)
    assert lp2[1] == 0 and torch.equal(carry2.states[1], carry.states[1])  # an empty row keeps its carry


@pytest.mark.parametrize("name, lean", [("brown-dropout", True), ("brown-dropout", False), ("none", False),
                                        ("uniform-transdrop", False)])
def test_carried_state_under_dropout_uses_the_new_draw(name, lean):
    """Training: the posterior over the old window's states is pushed through the new batch's transition rows
    (normalized over the new live states; under transition dropout with the new draw's mask of each old state's
    own row, the mask its row has in the window too); checked by explicit enumeration, values and gradients."""
    model = make(name, lean=lean).train()
    x, mask = window(4, [3], 3)
    x2, mask2 = window(5, [3], 3)
    _, carry = model(x, mask, None)
    state = model.generator.get_state()
    lp2, _ = model(x2, mask2, carry)
    lp2[0].backward()
    ours = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    model.zero_grad()
    model.generator.set_state(state)
    p = model.params_for(True)
    _, log_a, log_o = dense(p)
    old = carry.states[0]
    logits = model.param.transition_logits(old, p.live.states)  # [n_prev, C'] rows of the old states, directly
    with torch.no_grad():
        if model.cfg.transition_dropout:  # the new draw's mask, redrawn: the live set's draw comes first
            model.generator.set_state(state)
            live = sample_live(model.structure, model.cfg.kept_per_block, model.generator)
            assert torch.equal(live.states, p.live.states)
            drop = torch.rand(model.cfg.num_states, len(live.states), generator=model.generator) < \
                model.cfg.transition_dropout
            assert drop[old].any() and not drop[old].all(-1).any()
            # an old state that is live again has the same row in the window (every state is live here)
            at = torch.searchsorted(p.live.states, old)
            assert torch.equal(p.live.states[at], old) and torch.allclose(log_a[at], p.trans_rows(old), atol=1e-12)
    if model.cfg.transition_dropout:
        logits = logits.masked_fill(drop[old], -torch.inf)
    rows = logits.log_softmax(dim=-1)
    assert torch.allclose(rows, p.trans_rows(old), atol=1e-12)
    prior = torch.logsumexp(carry.log_q[0][:, None] + rows, dim=0)
    expected = brute_force(prior, log_a, log_o, p.log_start, x2[0].tolist(), resets(model))
    assert torch.allclose(lp2[0], expected, atol=1e-9)
    expected.backward()
    for n, q in model.named_parameters():
        if n in ours:
            assert torch.allclose(ours[n], q.grad, atol=1e-8), n
    assert ours.keys() == {n for n, q in model.named_parameters() if q.grad is not None}


def check_training_window_against_brute_force(model):
    """A training window's log p and every parameter gradient against autograd of brute force under the same
    dropout draw; also that both reach the same parameters (none the model misses, none it reaches alone)."""
    x, mask = window(6, [4, 2], 4)
    state = model.generator.get_state()
    logp, _ = model(x, mask, None)
    logp.sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.generator.set_state(state)
    log_start, log_a, log_o = dense(model.params_for(True))
    expected = [brute_force(log_start, log_a, log_o, log_start, x[b, : int(mask[b].sum())].tolist(), resets(model))
                for b in range(len(x))]
    assert torch.allclose(logp.detach(), torch.stack(expected).detach(), atol=1e-9)
    sum(expected).backward()
    reached = {n for n, param in model.named_parameters() if param.grad is not None}
    assert ours.keys() == reached, ours.keys() ^ reached
    for n, param in model.named_parameters():
        if n in ours:
            assert torch.allclose(ours[n], param.grad, atol=1e-8), n
    return x, mask


@pytest.mark.parametrize("name", ["brown", "brown-dropout", "brown-factored", "brown-scalar", "uniform-transdrop"])
def test_gradients_equal_autograd_of_brute_force(name):
    check_training_window_against_brute_force(make(name).train())


SCANS = {"matmul": MatmulScan(min_states=1)}   # the CPU runs' backend, on blocks of every size


@pytest.mark.parametrize("backend", SCANS)
@pytest.mark.parametrize("name", ["brown", "brown-dropout", "none", "brown-eos-reset"])
def test_scan_backends_equal_brute_force_values_gradients_and_carry(name, backend):
    """The model with another scan backend: log p of a window (training, with its gradients) and of two windows
    with the state carried (evaluation), each against brute force."""
    model = make(name, scan=SCANS[backend]).train()
    x, mask = check_training_window_against_brute_force(model)
    model.eval()
    x2, mask2 = window(3, [2, 2], 2)
    with torch.no_grad():
        lp1, carry = model(x, mask, None)
        lp2, _ = model(x2, mask2, carry)
        log_start, log_a, log_o = dense(model.params_for(False))
    for b in range(2):
        xs = x[b, : int(mask[b].sum())].tolist() + x2[b, : int(mask2[b].sum())].tolist()
        assert torch.allclose(lp1[b] + lp2[b], brute_force(log_start, log_a, log_o, log_start, xs, resets(model)),
                              atol=1e-9)


@pytest.mark.parametrize("training", [True, False])
def test_emissions_normalized_over_several_chunks_equal_a_masked_softmax(monkeypatch, training):
    """Blocks whose words span several chunks (EMIT_CHUNK = 2: block 0 has 3 words): each live state's emission
    row is the softmax of its logits over its block's words, computed here from the dense logits directly."""
    import hmm.model
    monkeypatch.setattr(hmm.model, "EMIT_CHUNK", 2)
    model = make("brown-dropout").train(training)
    p = model.params_for(training)
    assert model.structure.chunk_words.shape[1] == 2 and len(model.structure.chunk_words) > 3  # several chunks
    with torch.no_grad():
        logits = model.param.emission_dense(p.live.states)                              # [C', V]
        blocks = p.live.states // model.cfg.states_per_block
        allowed = blocks[:, None] == torch.as_tensor(CLUSTERS[3])[None, :]
        expected = logits.masked_fill(~allowed, -torch.inf).log_softmax(dim=-1)
        assert torch.allclose(dense(p)[2], expected, atol=1e-12)
    x, mask = window(1, [5, 3], 5)
    state = model.generator.get_state()
    logp, _ = model(x, mask, None)
    model.generator.set_state(state)
    log_start, log_a, log_o = dense(model.params_for(training))
    for b in range(len(x)):
        xs = x[b, : int(mask[b].sum())].tolist()
        assert torch.allclose(logp[b], brute_force(log_start, log_a, log_o, log_start, xs, resets(model)), atol=1e-9)


def test_transition_dropout_drops_its_share_of_the_transitions():
    """transition_dropout = 0.5 removes about half of the transition entries of a training batch (each row still
    normalized over what is left); 0 removes none, and evaluation never drops."""
    def trans(p_drop, training):
        cfg = HMMConfig(hidden=8, num_states=30, num_clusters=1, constraint="uniform", states_per_word=15,
                        state_dropout=0.0, transition_dropout=p_drop)
        torch.manual_seed(0)
        model = VLNHMM(cfg, V, None, eos_id=EOS, seed=0).double().train(training)
        return dense(model.params_for(training))[1]
    dropped = torch.isinf(trans(0.5, True)).double().mean().item()
    assert 0.45 < dropped < 0.55, dropped
    assert not torch.isinf(trans(0.0, True)).any() and not torch.isinf(trans(0.5, False)).any()
    assert torch.allclose(trans(0.5, True).exp().sum(-1), torch.ones(30, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["train-in-window", "train-in-and-between-windows", "none"])
def test_eos_reset_inside_windows_only_in_training(mode):
    """The released code's reset (train-in-window): in training the edge out of <eos> inside a
    window is replaced by the start distribution, the edge across a window boundary is not, and
    evaluation never resets; train-in-and-between-windows resets at the boundary too.  Two
    hand-made windows whose first ends with <eos>, scored with the carry, against brute force."""
    cfg = HMMConfig(hidden=8, num_states=6, num_clusters=3, state_dropout=0.0, eos_reset=mode)
    torch.manual_seed(5)
    model = VLNHMM(cfg, V, CLUSTERS[3], eos_id=EOS, seed=5).double()
    w1, w2 = [1, EOS, 3, EOS], [2, 4, EOS, 0]          # resets after positions 1 and 6; 3 ends window 1
    x1, x2 = torch.tensor([w1]), torch.tensor([w2])
    mask = torch.ones(1, 4, dtype=torch.bool)
    for training in (False, True):
        model.train(training)
        lp1, carry = model(x1, mask, None)
        lp2, _ = model(x2, mask, carry)
        log_start, log_a, log_o = dense(model.params_for(training))
        reset = training and mode != "none"
        boundary = () if mode == "train-in-and-between-windows" else (4,)
        expected = brute_force(log_start, log_a, log_o, log_start, w1 + w2, reset, boundary)
        assert torch.allclose(lp1 + lp2, expected[None], atol=1e-9), (mode, training)
    # the resets change the score, so a missing or an extra one would be noticed
    plain = brute_force(log_start, log_a, log_o, log_start, w1 + w2, False)
    everywhere = brute_force(log_start, log_a, log_o, log_start, w1 + w2, True)
    assert not torch.allclose(plain, everywhere, atol=1e-6)
    if mode == "train-in-window":
        assert not torch.allclose(lp1 + lp2, everywhere[None], atol=1e-6)
        assert not torch.allclose(lp1 + lp2, plain[None], atol=1e-6)


def brute_force_blocks(init, table, index, emit):
    """log Z [B] and posterior unary [B, S+1, n] / edge [B, S, n, n] marginals of the block form by enumerating
    every state path z_0 .. z_S (a padded step, index -1, keeps the state at no cost)."""
    import itertools
    B, S, n = emit.shape
    paths = torch.tensor(list(itertools.product(range(n), repeat=S + 1)))  # [N, S+1]
    log_z, unaries, pairs = [], [], []
    for b in range(B):
        score = init[b, paths[:, 0]]
        for t in range(S):
            u, prev, nxt = int(index[b, t]), paths[:, t], paths[:, t + 1]
            stay = torch.zeros(len(paths), dtype=emit.dtype).masked_fill(nxt != prev, -torch.inf)
            score = score + (table[u, prev, nxt] + emit[b, t, nxt] if u >= 0 else stay)
        lz = torch.logsumexp(score, 0)
        w = (score - lz).exp().detach()
        log_z.append(lz)
        unaries.append(torch.stack([torch.zeros(n, dtype=w.dtype).index_add(0, paths[:, t], w) for t in range(S + 1)]))
        pairs.append(torch.stack([torch.zeros(n * n, dtype=w.dtype).index_add(0, paths[:, t] * n + paths[:, t + 1], w)
                                  .view(n, n) for t in range(S)]) if S else torch.zeros(0, n, n, dtype=w.dtype))
    return torch.stack(log_z), torch.stack(unaries), torch.stack(pairs)


@pytest.mark.parametrize("B,S,n", [(3, 4, 5), (2, 0, 3), (1, 6, 2)])
def test_log_partition_and_marginal_gradient_equal_enumeration(B, S, n):
    """Block form with shared blocks, forbidden transitions and padding: log Z and the marginal gradient equal
    the enumeration of every path and its autograd gradient."""
    g = torch.Generator().manual_seed(B * 100 + S)
    U = 3
    init = torch.randn(B, n, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(U, n, n, generator=g, dtype=torch.float64)
    table = table.masked_fill(torch.rand(U, n, n, generator=g) < 0.3, -torch.inf)
    table[:, :, 0] = 0.0  # keep every sequence possible
    table.requires_grad_(True)
    emit = torch.randn(B, S, n, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, U, (B, S), generator=g)
    if S > 1:
        index[0, -1] = -1  # padding at the end of row 0
    weights = torch.rand(B, generator=g, dtype=torch.float64)
    log_z, _ = inference.log_partition_blocks(init, table, index, emit)
    (log_z * weights).sum().backward()
    ours = init.grad.clone(), table.grad.clone(), emit.grad.clone()
    init.grad = table.grad = emit.grad = None
    ref = brute_force_blocks(init, table, index, emit)[0]
    assert torch.allclose(log_z, ref, rtol=1e-12, atol=1e-12)
    (ref * weights).sum().backward()
    for got, param in zip(ours, (init, table, emit)):
        expected = param.grad if param.grad is not None else torch.zeros_like(param)  # S = 0: unused
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12), param.shape


def test_marginals_equal_brute_force_posteriors():
    g = torch.Generator().manual_seed(0)
    init, table = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, 4, generator=g, dtype=torch.float64)
    emit = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    table[1, 2, :3] = -torch.inf  # forbidden transitions
    index = torch.tensor([[0, 1, 4], [2, 2, 3]])
    unary, pair = inference.marginals_blocks(init, table, index, emit)
    _, unary_ref, pair_ref = brute_force_blocks(init, table, index, emit)
    assert torch.allclose(unary, unary_ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(pair, pair_ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(pair.sum(-1), unary[:, :-1], atol=1e-12)


def test_chunk_products_per_block_equal_the_batched_product():
    """The CPU's one-product-per-block emission logits equal the GPU's batched product and the products written
    out chunk by chunk, values and gradients; a single block (the dense row) too."""
    from hmm.model import chunk_products
    g = torch.Generator().manual_seed(0)
    for counts in ((3, 1, 2), (4,)):
        M, NC = len(counts), sum(counts)
        hs = torch.randn(M, 4, 5, generator=g, dtype=torch.double, requires_grad=True)
        words = torch.randn(NC, 6, 5, generator=g, dtype=torch.double, requires_grad=True)
        bias = torch.randn(NC, 6, generator=g, dtype=torch.double, requires_grad=True)
        chunk_block = torch.repeat_interleave(torch.arange(M), torch.tensor(counts))
        weights = torch.randn(NC, 6, 4, generator=g, dtype=torch.double)
        results = []
        for per_block in (None, False, True):
            if per_block is None:  # by hand: chunk c's word q against its block's state r
                out = torch.stack([words[c] @ hs[chunk_block[c]].T + bias[c][:, None] for c in range(NC)])
            else:
                out = chunk_products(hs, words, bias, chunk_block, counts, per_block)
            assert out.shape == (NC, 6, 4)
            grads = torch.autograd.grad((out * weights).sum(), (hs, words, bias))
            results.append((out, *grads))
        for ref, *others in zip(*results):
            for other in others:
                torch.testing.assert_close(other, ref)


def test_logsumexp_over_a_chunks_words_equals_torchs():
    """The chunks' normalizers (a shifted exp-sum over dim 1) equal torch.logsumexp, values and gradients, with
    -inf logits (padding words), a column that is -inf throughout (-inf, gradient 0 where torch's is NaN), and
    large logits that would overflow unshifted."""
    from hmm.model import _logsumexp_over_words
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, 3, generator=g, dtype=torch.double) * 4
    logits[1, 4:] = -torch.inf          # padding words at a chunk's end
    logits[2, :, 1] = -torch.inf        # nothing in this chunk for this state
    logits[3] += 800.0                  # exp overflows without the shift
    weights = torch.randn(5, 3, generator=g, dtype=torch.double)
    got, want = (x.clone().requires_grad_() for x in (logits, logits))
    ours, ref = _logsumexp_over_words(got), torch.logsumexp(want, dim=1)
    assert torch.isneginf(ours[2, 1]) and torch.isfinite(ours[3]).all()
    torch.testing.assert_close(ours, ref)
    ((ours.nan_to_num(neginf=0.0)) * weights).sum().backward()
    ((ref.nan_to_num(neginf=0.0)) * weights).sum().backward()
    assert torch.equal(got.grad[2, :, 1], torch.zeros(7, dtype=torch.double)) and want.grad[2, :, 1].isnan().all()
    torch.testing.assert_close(got.grad.nan_to_num(), want.grad.nan_to_num())


def test_carried_rows_once_per_distinct_state_equal_every_row(monkeypatch):
    """Training with a carry, 6 rows (most sharing their last word's block): the CPU's transition rows of
    each distinct carried state give the same log p and gradients as every row's own (the GPU's)."""
    import hmm.model

    x, mask = window(7, [5] * 6, 5)
    x2, mask2 = window(8, [5, 5, 3, 5, 4, 5], 5)
    results, calls = [], []
    branches = [hmm.model.distinct_carried_states, hmm.model.all_carried_states]
    for distinct in branches:
        monkeypatch.setattr(hmm.model, "distinct_carried_states",
                            lambda states, f=distinct: calls.append(f) or f(states))
        model = make("brown-dropout").train()
        model.lean_transition = False  # the dense training transition (a CPU run's), whose prior reads rows
        _, carry = model(x, mask, None)
        lp2, _ = model(x2, mask2, carry)
        lp2.sum().backward()
        results.append((lp2.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
        assert len(torch.unique(carry.states)) < carry.states.numel()  # the case: rows share states
    assert calls == branches
    (a, ga), (b, gb) = results
    assert len(ga["param.state_emb"].nonzero()) > 0
    torch.testing.assert_close(a, b)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n])
