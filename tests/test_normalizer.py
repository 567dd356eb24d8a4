"""The transition normalizer (torch tiles, fused Triton kernels, operand rounding), and the lean
training path of the VLNHMM against the dense one.

The fused kernels' tests (``test_fused_*``) run on CUDA where there is one; on CPU,
``test_interpreter_runs_the_fused_tests`` runs them in a subprocess under Triton's interpreter
(TRITON_INTERPRET=1 must be set before triton is imported).
"""
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hmm import normalizer
from hmm.config import HMMConfig
from hmm.model import BlockTransition, DenseTransition, FactoredTransition, VLNHMM
from hmm.normalizer import row_logsumexp
from hmm.precision import round_operand

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FUSED_DEVICE = ("cuda" if torch.cuda.is_available() else "cpu" if INTERPRET else None) if HAS_TRITON else None
fused = pytest.mark.skipif(FUSED_DEVICE is None, reason="run by test_interpreter_runs_the_fused_tests"
                           if HAS_TRITON else "triton is not installed")


def inputs(R, C, h, scale, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    p = (scale * torch.randn(R, h, generator=g, dtype=dtype)).to(device).requires_grad_()
    q = torch.randn(C, h, generator=g, dtype=dtype).to(device).requires_grad_()
    return p, q, torch.rand(R, generator=g, dtype=dtype).to(device)


def values_and_grads(fn, p, q, w):
    """fn(p, q) -> log Z; returns (log Z, dL/dp, dL/dq) for L = sum(w log Z), leaving no grads."""
    log_z = fn(p, q)
    grads = torch.autograd.grad((log_z * w.to(log_z.dtype)).sum(), (p, q))
    return (log_z.detach(), *grads)


def dense64(p, q, w, precision="fp32"):
    """The float64 reference on the operands rounded for ``precision`` (straight-through grads)."""
    def fn(a, b):
        a, b = (round_operand(x.float() if precision != "fp32" else x, precision).double() for x in (a, b))
        return torch.logsumexp(a @ b.T, dim=1)
    return values_and_grads(fn, p, q, w)


def rel_err(got, ref):
    """max |got - ref| over the tensor, relative to max |ref|."""
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# ---------------------------------------------------------------------------------------
# Operand rounding
# ---------------------------------------------------------------------------------------

def tf32_by_frexp(x):
    """Independent TF32 rounding in float64: to a multiple of 2^(e - 10) for x = 1.f 2^e (11
    significant bits; subnormals: e = -126, as float32), ties to even (torch.round)."""
    _, exp = torch.frexp(x.double())                       # x = m 2^exp, 0.5 <= |m| < 1
    quantum = torch.ldexp(torch.ones_like(x, dtype=torch.float64), exp.clamp(min=-125) - 11)
    return (torch.round(x.double() / quantum) * quantum).float()


def test_round_operand_tf32_is_round_to_nearest_even_on_10_mantissa_bits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * torch.logspace(-30, 30, 4096)
    ties = (torch.randint(0, 2**31 - 1, (512,), generator=g, dtype=torch.int32) & ~0x1FFF) | 0x1000
    x = torch.cat([x, ties.view(torch.float32), -ties.view(torch.float32)])
    x = x[torch.isfinite(x)]
    got = round_operand(x, "tf32")
    assert torch.equal(got, tf32_by_frexp(x))
    assert ((got.view(torch.int32) & 0x1FFF) == 0).all()
    special = torch.tensor([0.0, -0.0, torch.inf, -torch.inf, torch.nan, 3.4028235e38])
    out = round_operand(special, "tf32")
    assert torch.equal(out[:4], special[:4]) and out[4].isnan() and out[5] == torch.inf


def test_round_operand_bf16_fp32_and_straight_through_gradient():
    x = torch.randn(100, dtype=torch.float32, requires_grad=True)
    assert torch.equal(round_operand(x, "bf16"), x.bfloat16().float())
    assert round_operand(x, "fp32") is x
    for precision in ("tf32", "bf16"):
        (grad,) = torch.autograd.grad((round_operand(x, precision) * torch.arange(100.0)).sum(), x)
        assert torch.equal(grad, torch.arange(100.0))
    with pytest.raises(ValueError, match="precision"):
        round_operand(x, "fp16")
    with pytest.raises(TypeError, match="float32"):
        round_operand(x.double(), "tf32")


# ---------------------------------------------------------------------------------------
# The torch path (reference, CPU default)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("R,C,h,tile,scale", [
    (7, 13, 5, 4, 1.0),       # tile does not divide C
    (16, 16, 8, 16, 1.0),     # one exact tile
    (5, 3, 4, 1024, 1.0),     # tile wider than C
    (9, 50, 3, 7, 30.0),      # logits of hundreds: the running logsumexp must not overflow
    (1, 1, 1, 1, 1.0),
])
def test_row_logsumexp_equals_dense_values_and_gradients(R, C, h, tile, scale):
    p, q, w = inputs(R, C, h, scale)
    got = values_and_grads(lambda a, b: row_logsumexp(a, b, tile=tile), p, q, w)
    ref = values_and_grads(lambda a, b: torch.logsumexp(a @ b.T, dim=1), p, q, w)
    assert torch.isfinite(got[0]).all()
    assert torch.allclose(got[0], ref[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(got[1], ref[1], rtol=1e-10, atol=1e-12)
    assert torch.allclose(got[2], ref[2], rtol=1e-10, atol=1e-12)


def test_row_logsumexp_float32_and_gradcheck():
    p, q, _ = inputs(33, 70, 16, 2.0, seed=1, dtype=torch.float32)
    assert torch.allclose(row_logsumexp(p, q, tile=16), torch.logsumexp(p @ q.T, dim=1), rtol=1e-6, atol=1e-5)
    p, q, _ = inputs(4, 9, 3, 1.0, seed=2)
    assert torch.autograd.gradcheck(lambda a, b: row_logsumexp(a, b, tile=2), (p, q))


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_torch_path_rounds_the_operands(precision):
    p, q, w = inputs(37, 150, 24, 3.0, dtype=torch.float32)
    got = values_and_grads(lambda a, b: row_logsumexp(a, b, precision, tile=32), p, q, w)
    ref = dense64(p, q, w, precision)
    assert got[0].dtype == torch.float32
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-5
    assert rel_err(row_logsumexp(p, q, "fp32", tile=32), ref[0]) > 1e-4   # the rounding matters


def test_row_logsumexp_rejects_bad_arguments():
    p, q, _ = inputs(2, 2, 2, 1.0)
    with pytest.raises(ValueError, match="tile"):
        row_logsumexp(p, q, tile=0)
    with pytest.raises(ValueError, match="precision"):
        row_logsumexp(p, q, "fp16")
    with pytest.raises(ValueError, match="impl"):
        row_logsumexp(p, q, impl="cuda")
    with pytest.raises(ValueError, match="tile"):
        row_logsumexp(p, q, impl="triton", tile=4)


def test_cpu_tensors_default_to_the_torch_path():
    p, q, _ = inputs(3, 4, 2, 1.0, dtype=torch.float32)
    assert normalizer.default_impl(p, q) == "torch"


def _fake_fused(monkeypatch, row_logsumexp):
    """hmm.fused_normalizer replaced by a module whose row_logsumexp is ``row_logsumexp``."""
    import types
    import hmm
    fake = types.SimpleNamespace(row_logsumexp=row_logsumexp)
    monkeypatch.setitem(sys.modules, "hmm.fused_normalizer", fake)
    monkeypatch.setattr(hmm, "fused_normalizer", fake, raising=False)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_the_probe_passes_kernels_that_match_and_names_what_failed(monkeypatch, precision):
    """The probe behind the CUDA default: kernels that compute log Z of the rounded operands pass it; a compile or
    launch error, or values off by 1e-3, are the reason it returns (that device and precision then use the
    torch tiles)."""
    exact = lambda p, q, precision, block=None: row_logsumexp(p, q, precision, impl="torch")  # noqa: E731
    _fake_fused(monkeypatch, exact)
    assert normalizer._probe(torch.device("cpu"), precision) is None

    def no_launch(p, q, precision, block=None):
        raise RuntimeError("out of resource: shared memory, Required: 262144, Hardware limit: 232448.\nReducing...")
    _fake_fused(monkeypatch, no_launch)
    assert normalizer._probe(torch.device("cpu"), precision) == (
        f"the fused Triton kernels ({precision}) failed on cpu: RuntimeError: out of resource: shared memory, "
        "Required: 262144, Hardware limit: 232448.")
    _fake_fused(monkeypatch, lambda p, q, precision, block=None: exact(p, q, precision) * (1 + 1e-3))
    assert f"kernels ({precision}) differ from float64 on cpu" in normalizer._probe(torch.device("cpu"), precision)


def test_a_cuda_device_whose_probe_failed_gets_the_torch_tiles_with_a_warning(monkeypatch):
    monkeypatch.setattr(normalizer, "triton_available", lambda: True)
    monkeypatch.setattr(normalizer, "_PROBED", {"cuda:0 fp32": None, "cuda:0 bf16": "the fused Triton kernels (bf16) "
                                                "failed", "cuda:1 fp32": "the fused Triton kernels (fp32) failed"})
    monkeypatch.setattr(normalizer, "_WARNED", set())
    assert normalizer.impl_for("cuda:0") == "triton"
    assert normalizer.impl_for("cuda:0", torch.float64) == "torch"
    assert normalizer.impl_for("cpu") == "torch"
    with pytest.warns(RuntimeWarning, match="failed; the transition normalizer uses the torch tiles"):
        assert normalizer.impl_for("cuda:1") == "torch"
    with pytest.warns(RuntimeWarning, match=r"\(bf16\) failed"):
        assert normalizer.impl_for("cuda:0", precision="bf16") == "torch"
    monkeypatch.setattr(normalizer, "triton_available", lambda: False)
    assert normalizer.impl_for("cuda:0") == "torch"


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason="needs triton, outside the interpreter")
def test_triton_on_cpu_without_the_interpreter_is_a_clear_error():
    p, q, _ = inputs(3, 4, 2, 1.0, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        row_logsumexp(p, q, impl="triton")


# ---------------------------------------------------------------------------------------
# The fused Triton kernels (CUDA, or CPU under the interpreter)
# ---------------------------------------------------------------------------------------

RAGGED = [  # R, C, h, block, scale: nothing a multiple of the tile
    (37, 150, 24, (16, 32), 1.0),
    (5, 3, 4, (16, 16), 1.0),       # h below tl.dot's 16, tiles wider than R and C
    (40, 70, 33, (32, 16), 6.0),    # logits of hundreds
]


@fused
@pytest.mark.parametrize("R,C,h,block,scale", RAGGED)
def test_fused_fp32_equals_dense_values_and_gradients(R, C, h, block, scale):
    from hmm import fused_normalizer
    p, q, w = inputs(R, C, h, scale, dtype=torch.float32, device=FUSED_DEVICE)
    got = values_and_grads(lambda a, b: fused_normalizer.row_logsumexp(a, b, "fp32", block), p, q, w)
    ref32 = values_and_grads(lambda a, b: torch.logsumexp(a @ b.T, dim=1), p, q, w)
    ref64 = dense64(p, q, w)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32
    for g, r32, r64 in zip(got, ref32, ref64):
        assert rel_err(g, r32) < 1e-5 and rel_err(g, r64) < 1e-5


@fused
@pytest.mark.parametrize("precision,grad_tol", [("tf32", 5e-3), ("bf16", 2e-2)])
def test_fused_rounded_precisions_equal_float64_of_the_rounded_operands(precision, grad_tol):
    """log Z to float32 accuracy; the gradient products run in the reduced format (w rounded)."""
    from hmm import fused_normalizer
    p, q, w = inputs(37, 150, 24, 3.0, dtype=torch.float32, device=FUSED_DEVICE)
    got = values_and_grads(lambda a, b: fused_normalizer.row_logsumexp(a, b, precision, (16, 32)), p, q, w)
    ref = dense64(p, q, w, precision)
    assert rel_err(got[0], ref[0]) < 1e-5
    assert rel_err(got[1], ref[1]) < grad_tol and rel_err(got[2], ref[2]) < grad_tol


@fused
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_fused_rows_of_the_rounded_entries_sum_to_one(precision):
    """The caller's entries P~ Q~^T - log Z (float32, same rounding) are normalized rows;
    entries from the unrounded operands are not (for tf32 / bf16)."""
    p, q, _ = inputs(37, 150, 24, 1.0, dtype=torch.float32, device=FUSED_DEVICE)
    with torch.no_grad():
        log_z = row_logsumexp(p, q, precision, impl="triton")
        entries = round_operand(p, precision) @ round_operand(q, precision).T - log_z[:, None]
        unrounded = p @ q.T - log_z[:, None]
    assert (entries.exp().sum(dim=1) - 1).abs().max() < 1e-5
    if precision != "fp32":
        assert (unrounded.exp().sum(dim=1) - 1).abs().max() > 1e-4


@fused
def test_fused_backward_is_deterministic_and_default_tiles_work():
    from hmm import fused_normalizer
    p, q, w = inputs(70, 90, 20, 1.0, dtype=torch.float32, device=FUSED_DEVICE)
    runs = [values_and_grads(lambda a, b: fused_normalizer.row_logsumexp(a, b, "tf32"), p, q, w) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    ref = dense64(p, q, w, "tf32")
    assert rel_err(runs[0][0], ref[0]) < 1e-5


@fused
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_fused_kernels_pass_the_probe(precision):
    assert normalizer._probe(torch.device(FUSED_DEVICE), precision) is None


@fused
def test_fused_bench_writes_csv_rows(tmp_path):
    from bench import normalizer as bench_normalizer
    out = tmp_path / "bench.csv"
    bench_normalizer.main(["--R", "20", "--C", "40", "--h", "16", "--precision", "bf16",
                           "--repeats", "1", "--device", FUSED_DEVICE, "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r["impl"] for r in rows] == ["torch", "triton"]
    assert all(float(r["fwd_ms"]) > 0 and float(r["max_abs_diff"]) < 1e-4 for r in rows)


@pytest.mark.skipif(FUSED_DEVICE is not None or not HAS_TRITON, reason="the fused tests run in this process")
def test_interpreter_runs_the_fused_tests():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "test_fused_"]
    run = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason="needs triton, outside the interpreter")
def test_default_tiles_compile_for_sm90_without_spills():
    """ptxas resources of the three kernels at h = 256 for an H100/H200 (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from hmm import fused_normalizer as fn
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's bundled cuobjdump is missing")
    for precision, (fwd, bwd) in fn.TILES.items():
        elem = "*bf16" if precision == "bf16" else "*fp32"
        for kernel, grad, block in ((fn._forward_kernel, None, fwd), (fn._grad_p_kernel, "GRAD_P", bwd),
                                    (fn._grad_q_kernel, "GRAD_Q", bwd)):
            meta = fn._meta(256, precision, block)
            options = {k: meta.pop(k) for k in ("num_warps", "num_stages")}
            signature = {"P": elem, "Q": elem, "LOG_Z": "*fp32", **({"G": "*fp32", grad: "*fp32"} if grad else {}),
                         "R": "i32", "C": "i32", "H": "i32", **{k: "constexpr" for k in meta}}
            compiled = triton.compile(ASTSource(kernel, signature, constexprs=meta),
                                      target=GPUTarget("cuda", 90, 32), options=options)
            assert compiled.metadata.shared <= 227 * 1024, (precision, kernel.__name__)
            cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"normalizer-{os.getpid()}.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
            cubin.unlink()
            assert "STACK:0 " in usage, (precision, kernel.__name__, usage)


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
    """float64: elementwise allclose(1e-10) (the paths agree to about 1e-14); float32: max error <= 1e-5 of
    ``scale`` (default: the tensor's max |ref|, at least 1)."""
    if dtype == torch.float64:
        return torch.allclose(got, ref, rtol=1e-10, atol=1e-10)
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
    cached = lean.params_for(False).transition  # the cached matrix at evaluation (as blocks under brown)
    assert isinstance(cached, BlockTransition if lean.cfg.constraint == "brown" else DenseTransition)
    assert torch.allclose(lp_lean, lp_dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra", [dict(neural=False), dict(transition_dropout=0.25)])
def test_scalar_parameterization_and_transition_dropout_stay_dense(extra):
    cfg = HMMConfig(hidden=16, **{**VARIANTS["brown-dropout"], **extra})
    model = VLNHMM(cfg, V, np.arange(V) % cfg.num_clusters, EOS).train()
    transition = model.params_for(True).transition  # the dense matrix (read by brown blocks: LiveBlockTransition)
    assert model.transition_path == "dense" and not isinstance(transition, FactoredTransition)
    assert isinstance(transition, DenseTransition) or isinstance(transition.carried, DenseTransition)
