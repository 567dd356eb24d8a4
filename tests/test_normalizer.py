"""The tiled transition normalizer, and the lean training path of the VLNHMM against the dense one."""
import numpy as np
import pytest
import torch

from hmm import normalizer
from hmm.config import HMMConfig
from hmm.model import DenseTransition, FactoredTransition, VLNHMM
from hmm.normalizer import row_logsumexp


def inputs(R, C, h, scale, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = (scale * torch.randn(R, h, generator=g, dtype=dtype)).requires_grad_()
    q = torch.randn(C, h, generator=g, dtype=dtype).requires_grad_()
    return p, q, torch.rand(R, generator=g, dtype=dtype)


@pytest.mark.parametrize("R,C,h,tile,scale", [
    (7, 13, 5, 4, 1.0),       # tile does not divide C
    (16, 16, 8, 16, 1.0),     # one exact tile
    (5, 3, 4, 1024, 1.0),     # tile wider than C
    (9, 50, 3, 7, 30.0),      # logits of hundreds: the running logsumexp must not overflow
    (1, 1, 1, 1, 1.0),
])
def test_row_logsumexp_equals_dense_values_and_gradients(R, C, h, tile, scale):
    p, q, w = inputs(R, C, h, scale)
    got = row_logsumexp(p, q, tile)
    (got * w).sum().backward()
    got_grads = p.grad.clone(), q.grad.clone()
    p.grad = q.grad = None
    ref = torch.logsumexp(p @ q.T, dim=1)
    (ref * w).sum().backward()
    assert torch.isfinite(got).all()
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got_grads[0], p.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got_grads[1], q.grad, rtol=1e-10, atol=1e-12)


def test_row_logsumexp_float32_and_gradcheck():
    p, q, _ = inputs(33, 70, 16, 2.0, seed=1, dtype=torch.float32)
    assert torch.allclose(row_logsumexp(p, q, 16), torch.logsumexp(p @ q.T, dim=1), rtol=1e-6, atol=1e-5)
    p, q, _ = inputs(4, 9, 3, 1.0, seed=2)
    assert torch.autograd.gradcheck(lambda a, b: row_logsumexp(a, b, 2), (p, q))


def test_row_logsumexp_rejects_a_tile_below_one():
    p, q, _ = inputs(2, 2, 2, 1.0)
    with pytest.raises(ValueError, match="tile"):
        row_logsumexp(p, q, 0)


# ---------------------------------------------------------------------------------------
# Model level: the lean path (factors + tiled normalizer) equals the dense reference
# ---------------------------------------------------------------------------------------

V, EOS = 20, 19
VARIANTS = {
    "brown-dropout": dict(num_states=64, num_clusters=4, state_dropout=0.5),
    "brown-factored": dict(num_states=64, num_clusters=4, state_dropout=0.5, state_repr="factored"),
    "none-eos-reset": dict(num_states=16, num_clusters=1, constraint="none", state_dropout=0.25, eos_reset="always"),
    "uniform": dict(num_states=24, num_clusters=1, constraint="uniform", states_per_word=6, state_dropout=0.0),
}


def pair(name):
    """(lean, dense) models with equal weights and equal dropout generators."""
    cfg = HMMConfig(hidden=16, **VARIANTS[name])
    clusters = np.arange(V) % cfg.num_clusters
    models = [VLNHMM(cfg, V, clusters, EOS, seed=3, lean_transition=lean) for lean in (True, False)]
    models[1].load_state_dict(models[0].state_dict())
    return models


def windows(B=3, T=6):
    g = torch.Generator().manual_seed(7)
    xs = [torch.randint(0, V, (B, T), generator=g) for _ in range(2)]
    xs[0][0, 2] = xs[1][1, 0] = EOS
    mask = torch.arange(T)[None, :] < torch.tensor([T, T - 2, 1])[:, None]
    return [(xs[0], torch.ones(B, T, dtype=torch.bool)), (xs[1], mask)]


def run(model, training):
    """log p of two windows with carry, and (training) every parameter's gradient."""
    model.train(training)
    carry, logps = None, []
    for x, mask in windows():
        logp, carry = model(x, mask, carry)
        logps.append(logp)
    logp = torch.cat(logps)
    if training:
        logp.sum().backward()
    return logp.detach(), {n: p.grad for n, p in model.named_parameters()}


def close(got, ref, dtype, scale=None):
    """float64: elementwise allclose(1e-5); float32: max error <= 1e-5 of ``scale`` (default:
    the tensor's max |ref|, at least 1)."""
    if dtype == torch.float64:
        return torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    scale = max(ref.abs().max().item(), 1.0) if scale is None else scale
    return (got - ref).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", VARIANTS)
def test_lean_training_equals_dense_reference(name, dtype, monkeypatch):
    monkeypatch.setattr(normalizer, "TILE", 5)  # several tiles, the last one partial
    lean, dense = (m.to(dtype) for m in pair(name))
    lean.train()
    assert isinstance(lean.params_for(True).transition, FactoredTransition)
    lean.generator.manual_seed(3)  # undo the draw just made
    (lp_lean, g_lean), (lp_dense, g_dense) = run(lean, True), run(dense, True)
    assert close(lp_lean, lp_dense, dtype)
    assert g_lean.keys() == g_dense.keys()
    # float32: relative to the whole gradient's scale.  Every parameter's gradient sums terms of
    # that scale, so one that is zero in exact arithmetic (e.g. the bias of the LayerNorm that
    # makes Q: shift-invariant softmax rows) is float32 noise, order-dependent, not ~1e-5 of itself.
    scale = max(g.abs().max().item() for g in g_dense.values())
    for n in g_lean:
        assert close(g_lean[n], g_dense[n], dtype, scale), n


@pytest.mark.parametrize("name", ["brown-dropout", "uniform"])
def test_lean_evaluation_equals_dense_reference(name):
    lean, dense = pair(name)
    (lp_lean, _), (lp_dense, _) = run(lean, False), run(dense, False)
    assert isinstance(lean.params_for(False).transition, DenseTransition)  # cached matrix at evaluation
    assert torch.allclose(lp_lean, lp_dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra", [dict(neural=False), dict(transition_dropout=0.25)])
def test_scalar_parameterization_and_transition_dropout_stay_dense(extra):
    cfg = HMMConfig(hidden=16, **{**VARIANTS["brown-dropout"], **extra})
    model = VLNHMM(cfg, V, np.arange(V) % cfg.num_clusters, EOS).train()
    assert isinstance(model.params_for(True).transition, DenseTransition)
