"""The FF and LSTM baselines: window invariance, padding, brute force, training mode (counts: test_params)."""
import pytest
import torch
import torch.nn.functional as F

from baselines.ff import FFLM
from baselines.lstm import LSTMLM

V, B, T = 50, 3, 23
MODELS = {"ff": lambda: FFLM(V, order=5, hidden=16, dropout=0.3),
          "lstm": lambda: LSTMLM(V, layers=2, hidden=16, dropout=0.3)}


def leaves(carry):
    """The tensors of a carry: FF ids [B, K] or the LSTM's (h, c)."""
    return [carry] if torch.is_tensor(carry) else list(carry)


def make(name, seed=0):
    torch.manual_seed(seed)
    return MODELS[name]().double().eval()


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (B, T), generator=g), torch.ones(B, T, dtype=torch.bool)


@pytest.mark.parametrize("width", [1, 5])
@pytest.mark.parametrize("name", MODELS)
def test_window_invariance(name, width):
    model, (x, mask) = make(name), data()
    whole, _ = model(x, mask, model.initial_state(B))
    total, carry = torch.zeros(B, dtype=torch.double), model.initial_state(B)
    for s in range(0, T, width):
        logp, carry = model(x[:, s:s + width], mask[:, s:s + width], carry)
        total += logp
    torch.testing.assert_close(total, whole)


@pytest.mark.parametrize("name", MODELS)
def test_padding(name):
    model, (x, mask) = make(name), data()
    mask[1, 15:] = False
    padded, carry = model(x, mask, None)
    short, short_carry = model(x[1:2, :15], mask[1:2, :15], None)
    torch.testing.assert_close(padded[1:2], short)
    # the next window continues from the last real token: same scores for the padded row
    y, ymask = data(seed=2)
    nxt, _ = model(y, ymask, carry)
    short_nxt, _ = model(y[1:2], ymask[1:2], short_carry)
    torch.testing.assert_close(nxt[1:2], short_nxt)
    # a fully masked row scores 0 and keeps its carry
    ymask[2] = False
    logp, new = model(y, ymask, carry)
    assert logp[2] == 0
    for old, kept in zip(leaves(carry), leaves(new)):
        dim = 0 if old.dim() == 2 else 1  # FF carry [B, K], LSTM state [L, B, h]
        assert torch.equal(old.select(dim, 2), kept.select(dim, 2))
        assert not torch.equal(old.select(dim, 0), kept.select(dim, 0))


def brute_ff(model, x):
    """log p(x_t | the 4 previous words), pads before the start, one position at a time."""
    K, out = model.context, torch.zeros(len(x), dtype=torch.double)
    for b in range(len(x)):
        for t in range(x.shape[1]):
            ctx = [model.pads[t + j] if t + j < K else model.emb.weight[x[b, t + j - K]] for j in range(K)]
            h = F.relu(model.conv(torch.stack(ctx).T[None]))[0, :, 0]   # conv over exactly K words
            h = F.relu(model.lin(h))
            out[b] += F.log_softmax(h @ model.emb.weight.T, dim=-1)[x[b, t]]
    return out


def brute_lstm(model, x):
    """log p(x_t | x_<t): one LSTM step per token from the zero state, x_t scored before it is read."""
    out = torch.zeros(len(x), dtype=torch.double)
    for b in range(len(x)):
        L, H = model.lstm.num_layers, model.lstm.hidden_size
        state = (torch.zeros(L, 1, H, dtype=torch.double), torch.zeros(L, 1, H, dtype=torch.double))
        for t in range(x.shape[1]):
            logits = model.emb.weight @ state[0][-1, 0] + model.bias
            out[b] += F.log_softmax(logits, dim=-1)[x[b, t]]
            _, state = model.lstm(model.emb.weight[x[b, t]][None, None], state)
    return out


@pytest.mark.parametrize("name,brute", [("ff", brute_ff), ("lstm", brute_lstm)])
def test_brute_force(name, brute):
    model, (x, mask) = make(name), data()
    torch.testing.assert_close(model(x, mask, None)[0], brute(model, x))


@pytest.mark.parametrize("name", MODELS)
def test_training_mode(name):
    model, (x, mask) = make(name), data()
    model.train()
    carry = model(x, mask, None)[1]
    logp, new = model(x, mask, carry)
    assert all(not t.requires_grad for t in leaves(new))
    (-logp.sum()).backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert not torch.equal(model(x, mask, carry)[0], model(x, mask, carry)[0])  # dropout is on


@pytest.mark.parametrize("name", ["ff", "lstm"])
def test_eval_protocols_carried_is_the_runs_perplexity_and_resets_count_as_said(name, small_ptb):
    """bench.eval_protocols: ``carried`` equals evaluate()'s perplexity; ``reset`` scores every token from a
    dropped state (another number for the LSTM, whose state spans windows; the FF's context too, 4 words);
    ``reset-skip-first`` counts every token but each window's first row of tokens; evaluation mode each time."""
    from bench.eval_protocols import score
    from pipeline.data.corpus import Corpus, Windows
    from pipeline.training.evaluate import evaluate

    torch.manual_seed(0)
    ids = Corpus.load(small_ptb).splits["valid"]
    V = int(ids.max()) + 1
    model = FFLM(V, 5, 16, 0.3) if name == "ff" else LSTMLM(V, 2, 16, 0.3)
    model.train()  # score() evaluates in eval mode whatever the mode it is given
    carried, n = score(model, ids, 4, 8, "carried")
    assert n == len(ids) and carried == pytest.approx(evaluate(model, ids, 4, 8, "cpu")[0], rel=1e-6)
    reset, n_reset = score(model, ids, 4, 8, "reset")
    assert n_reset == len(ids) and reset != pytest.approx(carried, rel=1e-6)
    windows = Windows(ids, 4, 8)
    _, n_skip = score(model, ids, 4, 8, "reset-skip-first")
    assert n_skip == len(ids) - sum(int(mask[:, 0].sum()) for _, mask in windows)
