"""Scan backends against the PyTorch reference (hmm.inference): the TVM kernels (hmm.kernels) and the
matrix-product scans (hmm.matmul_scan); the ``scan`` fixture is each in turn, ``tvm_scan`` the TVM one.

The kernels read block-form potentials: init [B, n], table [U, n, n], index [B, S] (-1 =
padding), emit [B, S, n].  Scans are compared with the float64 block-form PyTorch scans
(themselves checked against the edge-form scans on the implied edges) elementwise:
|got - ref| <= 1e-5 * max(|ref|, 1), with exactly the same -inf and NaN entries.  Gradients
(marginals) are compared with the float64 autograd reference as max|got - ref| / max|ref| <= 1e-5
on log-normalised potentials; on raw potentials, where alpha reaches ~200 and float32 rounding of
alpha + beta - log Z alone gives ~1e-5, the TVM gradient must be within twice the float32
PyTorch path's error.

S = 0 (a window of one token) is meaningful: alpha = init, beta = 0, log Z = logsumexp(init).

CUDA: the build (TVM codegen + nvcc fatbin) runs here; the exact CUDA source that ships is
executed by a CPU emulation of CUDA threads, blocks and barriers (g++); the GPU loading path
is exercised up to the driver with a stub libcuda.  Runs on a GPU only where torch sees one;
``HMM_CUDA_KERNELS=DIR`` makes the GPU test use prebuilt kernels (no compiler needed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hmm import inference
from hmm.inference import (TorchScan, block_edges, log_partition_blocks, log_partition_blocks_autograd,
                           scan_backward, scan_forward)
from hmm.kernels import KernelError, TVMScan
from hmm.kernels import build as kbuild
from hmm.kernels import check as kcheck
from hmm.kernels import runtime as krt
from hmm.matmul_scan import MIN_STATES, MatmulScan, _shared_block

# the matmul backend with products at every n (its default leaves n < 64 to the reference)
PRODUCTS = MatmulScan(min_states=1)

ROOT = Path(__file__).resolve().parents[1]
LLVM_STATES = [4, 8, 16, 64, 128, 256]
CUDA_STATES = [4, 32, 128]
NEG = float("-inf")
NAN = float("nan")


@pytest.fixture(scope="session")
def llvm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / "llvm"
    kbuild.build("llvm", LLVM_STATES, out, verbose=False)
    return out


@pytest.fixture(scope="session")
def tvm_scan(llvm_dir):
    return TVMScan.load(llvm_dir)


@pytest.fixture(scope="session", params=["tvm", "matmul"])
def scan(request):
    """Every backend the reference checks: each test taking ``scan`` runs once per backend."""
    return request.getfixturevalue("tvm_scan") if request.param == "tvm" else PRODUCTS


@pytest.fixture(scope="session")
def cuda_build(tmp_path_factory):
    if shutil.which("nvcc") is None:
        why = "nvcc not on PATH: the CUDA build compiles fatbins ahead of time"
        if os.environ.get("CI") == "true":  # CI's machine has nvcc: the CUDA checks the README names must run there
            pytest.fail(why)
        pytest.skip(why)
    out = tmp_path_factory.mktemp("kernels") / "cuda"
    kbuild.build("cuda", CUDA_STATES, out, archs=["sm_90"], verbose=False)
    return out


@pytest.fixture(scope="session")
def cuda_kernels(request):
    """CUDA kernels to run on a GPU: $HMM_CUDA_KERNELS (prebuilt, nothing compiled) or a build."""
    prebuilt = os.environ.get("HMM_CUDA_KERNELS")
    return Path(prebuilt) if prebuilt else request.getfixturevalue("cuda_build")


def potentials(B, S, n, U=5, seed=0, normalised=False, dead_column=True):
    """init [B, n], table [U, n, n], index [B, S] int32, emit [B, S, n] with random -inf
    entries, blocks shared between edges, padding (-1) at the end of row 0, and in edge
    (B-1, 0) a block with a whole -inf row (and column).

    dead_column=False keeps every state reachable (no -inf emission, row 0 of every block
    finite), as the float64 autograd reference is NaN where a logsumexp has only -inf terms."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(B, n, generator=g) * 2
    table = torch.randn(U, n, n, generator=g) * 2
    emit = torch.randn(B, S, n, generator=g) * 2
    if normalised:
        init, table, emit = init.log_softmax(-1), table.log_softmax(-1), emit.log_softmax(-1)
    index = torch.randint(0, U - 1, (B, S), generator=g, dtype=torch.int32)
    init[torch.rand(B, n, generator=g) < 0.25] = NEG
    init[:, 0] = 0.0 if normalised else init[:, 0].nan_to_num(neginf=0.0)  # some state stays alive
    table[torch.rand(U, n, n, generator=g) < 0.3] = NEG
    table[:, 0, 0] = 0.0  # state 0 always reachable
    if dead_column:
        emit[torch.rand(B, S, n, generator=g) < 0.1] = NEG
        emit[..., 0] = 0.0
    else:
        table[:, 0, :] = table[:, 0, :].nan_to_num(neginf=-1.0)
    if S >= 2 and B >= 1:
        index[0, S // 2:] = -1  # row 0 ends early: padding
        emit[0, S // 2:] = NAN if dead_column else 0.0  # ignored at padding
    if S >= 1 and n >= 4 and B >= 1:
        index[B - 1, 0] = U - 1  # the last block is used once, by this edge
        table[U - 1, 1, :] = NEG  # state 1 has no successor
        if dead_column:
            table[U - 1, :, 2] = NEG  # state 2 unreachable: alpha = -inf there
    return init, table, index, emit


def reference(init, table, index, emit):
    """float64 alpha, beta of the block-form PyTorch scans (hmm.inference.TorchScan)."""
    return (TorchScan.forward(init.double(), table.double(), index, emit.double()),
            TorchScan.backward(table.double(), index, emit.double()))


def assert_close_scan(got, ref, tol=1e-5):
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert torch.equal(got.isnan(), ref.isnan()), "NaN pattern differs"
    assert torch.equal(got.isneginf(), ref.isneginf()), "-inf pattern differs"
    fin = torch.isfinite(ref)
    err = ((got.double()[fin] - ref[fin]).abs() / ref[fin].abs().clamp_min(1.0)).max().item() if fin.any() else 0.0
    assert err <= tol, f"relative error {err:.3g} > {tol}"


def rel_err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() if ref.numel() else 0.0


SHAPES = [(6, 11, 256), (8, 15, 128), (3, 1, 4), (2, 0, 8), (0, 3, 8), (5, 7, 16), (4, 9, 64)]


@pytest.mark.parametrize("B,S,n", SHAPES)
def test_scans_match_reference(scan, B, S, n):
    init, table, index, emit = potentials(B, S, n)
    alpha, beta = reference(init, table, index, emit)
    assert_close_scan(scan.forward(init, table, index, emit), alpha)
    assert_close_scan(scan.backward(table, index, emit), beta)


def test_matmul_scan_with_a_rarely_read_block_matches_reference():
    """Dense with ``<eos>`` resets: U = 2 blocks, the second (the start block) read by a few rows at a few
    steps.  The matmul scan multiplies all rows by the shared block and only those rows by the other."""
    init, table, index, emit = potentials(16, 9, 64, U=2, seed=6)
    index[3, 2] = index[7, 2] = index[5, 8] = 1   # and (15, 0), set by potentials; row 0 pads from step 4
    index[1:, 6] = 1                              # a step where the start block is the shared one
    index[2, 6] = 0
    plan = _shared_block(index)
    assert [shared for shared, _ in plan] == [0, 0, 0, 0, 0, 0, 1, 0, 0]
    rows = [{block: r.tolist() for block, r in others} for _, others in plan]
    assert rows[2] == {1: [3, 7]} and rows[6] == {0: [2]} and rows[1] == {} and rows[0] == {1: [15]}
    alpha, beta = reference(init, table, index, emit)
    assert_close_scan(PRODUCTS.forward(init, table, index, emit), alpha)
    assert_close_scan(PRODUCTS.backward(table, index, emit), beta)


@pytest.mark.parametrize("B,S,n", [(4, 9, 8), (2, 0, 4), (0, 2, 4)])
def test_block_reference_matches_edge_reference(B, S, n):
    """hmm.inference's block-form scans (TorchScan) equal the edge-form scans on the implied
    edges (NaN emissions at padding are ignored by both)."""
    init, table, index, emit = _double(*potentials(B, S, n))
    edges = block_edges(table, index, emit)
    assert not edges.isnan().any()
    torch.testing.assert_close(TorchScan.forward(init, table, index, emit), scan_forward(init, edges))
    torch.testing.assert_close(TorchScan.backward(table, index, emit), scan_backward(edges))


def test_all_minus_inf_gives_minus_inf(scan):
    init, table, index, emit = potentials(3, 4, 8)
    init[1] = NEG  # nothing alive at all in stream 1
    emit[2] = NEG  # every emission impossible in stream 2
    alpha, beta = scan.forward(init, table, index, emit), scan.backward(table, index, emit)
    assert torch.isneginf(alpha[1]).all() and torch.isneginf(alpha[2, 1:]).all()
    assert torch.isneginf(beta[2, :-1]).all() and (beta[2, -1] == 0).all()
    assert_close_scan(alpha, reference(init, table, index, emit)[0])
    assert_close_scan(beta, reference(init, table, index, emit)[1])


NAN_CASES = {  # a NaN in init, in one entry of the block edge (2, 1) uses, or in one emission
    "init": lambda i, t, x, e: i.__setitem__((1, e.shape[-1] - 1), NAN),
    "table": lambda i, t, x, e: t.__setitem__((int(x[2, 1]), 1, e.shape[-1] - 1), NAN),
    "emit": lambda i, t, x, e: e.__setitem__((2, 4, e.shape[-1] - 2), NAN)}


@pytest.mark.parametrize("where", NAN_CASES)
def test_nan_in_gives_nan_out(scan, where):
    """A NaN potential gives NaN in exactly the outputs where the float64 reference has NaN
    (torch.logsumexp propagates NaN), and so a NaN log Z for the streams it reaches."""
    init, table, index, emit = potentials(4, 6, 16, seed=4)
    NAN_CASES[where](init, table, index, emit)
    alpha, beta = reference(init, table, index, emit)
    assert alpha.isnan().any() or beta.isnan().any()
    assert_close_scan(scan.forward(init, table, index, emit), alpha)
    assert_close_scan(scan.backward(table, index, emit), beta)
    ref_log_z = torch.logsumexp(alpha[:, -1], -1)
    for backend in (scan, TorchScan):
        log_z = log_partition_blocks(init, table, index, emit, scan=backend)[0]
        assert torch.equal(log_z.isnan(), ref_log_z.isnan()) and log_z.isnan().any()


def _grads(fn, init, table, index, emit):
    leaves = [x.clone().requires_grad_() for x in (init, table, emit)]
    fn(leaves[0], leaves[1], index, leaves[2]).sum().backward()
    return [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]  # None: S = 0 or B = 0


def _double(*xs):
    return [x.double() if x.is_floating_point() else x for x in xs]


@pytest.mark.parametrize("B,S,n", [(3, 5, 256), (3, 1, 4), (2, 0, 8), (0, 2, 8), (4, 9, 64)])
def test_gradients_match_autograd(scan, B, S, n):
    # The float64 autograd reference is NaN where a logsumexp has only -inf terms.
    for normalised in (True, False):
        pots = potentials(B, S, n, seed=1, normalised=normalised, dead_column=False)
        ref = _grads(log_partition_blocks_autograd, *_double(*pots))
        got = _grads(lambda *a: log_partition_blocks(*a, scan=scan)[0], *pots)
        errs = [rel_err(g, r) for g, r in zip(got, ref)]
        assert all(not g.isnan().any() for g in got)
        if normalised:
            assert max(errs) <= 1e-5, errs
        else:
            torch32 = _grads(lambda *a: log_partition_blocks(*a, scan=TorchScan)[0], *pots)
            bound = [max(1e-5, 2 * rel_err(g, r)) for g, r in zip(torch32, ref)]
            assert all(e <= b for e, b in zip(errs, bound)), (errs, bound)


def test_gradient_chunks_and_weights(monkeypatch):
    """grad_table accumulated a few edges at a time (index_add_) equals autograd, with a
    weighted sum of log Z (each row's incoming gradient) and int64 index."""
    monkeypatch.setattr(inference, "GRAD_CHUNK_ELEMENTS", 3 * 8 * 8)
    init, table, index, emit = _double(*potentials(5, 6, 8, U=3, seed=5, dead_column=False))
    w = torch.rand(5, dtype=torch.float64)
    ours = _grads(lambda *a: log_partition_blocks(*a)[0] * w, init, table, index.long(), emit)
    ref = _grads(lambda *a: log_partition_blocks_autograd(*a) * w, init, table, index, emit)
    for g, r in zip(ours, ref):
        torch.testing.assert_close(g, r)


def test_marginals_with_dead_state_have_no_nan(scan):
    pots = potentials(4, 6, 16, seed=2)  # (with NaN emissions at padding, which must not matter)
    got = _grads(lambda *a: log_partition_blocks(*a, scan=scan)[0], *pots)
    ref = _grads(lambda *a: log_partition_blocks(*a, scan=TorchScan)[0], *_double(*pots))
    for g, r in zip(got, ref):
        assert not g.isnan().any() and rel_err(g, r) <= 1e-5
    # and against a reference that shares no gradient code with them: float64 autograd of the forward algorithm
    # on the same potentials with -inf as -1e4 (finite, so no NaN; e^-1e4 is 0 in float64) and the padding's
    # NaN emissions as 0 (ignored there)
    finite = [x.nan_to_num(nan=0.0, neginf=-1e4) if x.is_floating_point() else x for x in _double(*pots)]
    auto = _grads(log_partition_blocks_autograd, *finite)
    for g, r in zip(got, auto):
        assert rel_err(g, r) <= 1e-5, rel_err(g, r)


def test_input_checks(tvm_scan):
    scan = tvm_scan
    init, table, index, emit = potentials(2, 3, 8)
    bad = index.clone()
    bad[1, 1] = 5
    with pytest.raises(ValueError, match=r"index values must be in \[-1, U=5\), got min -1, max 5"):
        scan.forward(init, table, bad, emit)
    with pytest.raises(ValueError, match="index must be int32 or int64"):
        scan.backward(table, index.float(), emit)
    with pytest.raises(ValueError, match=r"emit must be float32 \[2, 3, 8\]"):
        scan.backward(table, index, emit.double())
    with pytest.raises(ValueError, match=r"init must be float32 \[2, 8\]"):
        scan.forward(init[:1], table, index, emit)
    assert_close_scan(scan.forward(init, table, index.long(), emit), reference(init, table, index, emit)[0])


def test_a_table_past_int32_indexing_is_cut_to_the_blocks_in_use(tvm_scan, monkeypatch):
    """Evaluation at 2^16 states hands the scans M^2 = 16,384 blocks of 512 x 512 (2^32 floats): the kernels
    (int32 indexing) get the blocks the batch reads, renumbered, and compute the same scan."""
    from hmm.kernels import runtime

    init, table, index, emit = potentials(4, 6, 8, U=7)
    # a [U, n, n] view with U n n >= 2^31 floats and no memory (every block is table[0]), read at block 0
    view = table[:1].expand(2**31 // 64 + 3, 8, 8)
    first = torch.where(index < 0, -1, 0).to(index.dtype)
    alpha, beta = reference(init, table[:1], first, emit)
    assert_close_scan(tvm_scan.forward(init, view, first, emit), alpha)
    assert_close_scan(tvm_scan.backward(view, first, emit), beta)
    # the renumbering itself: 7 distinct blocks in use of 12 (the limit lowered so that 7 pass it, 12 do not)
    table = torch.cat([table, torch.randn(5, 8, 8)])
    monkeypatch.setattr(runtime, "INT32_LIMIT", 8 * 64)
    alpha, beta = reference(init, table, index, emit)
    assert_close_scan(tvm_scan.forward(init, table, index, emit), alpha)
    assert_close_scan(tvm_scan.backward(table, index, emit), beta)
    kept, renumbered = runtime.used_blocks(table, index)
    assert len(kept) == len(index[index >= 0].unique()) and torch.equal(renumbered < 0, index < 0)
    assert torch.equal(kept[renumbered[index >= 0].long()], table[index[index >= 0].long()])
    monkeypatch.setattr(runtime, "INT32_LIMIT", 6 * 64)  # even the 7 blocks in use reach it
    with pytest.raises(ValueError, match=r"blocks this batch uses hold U\*n\*n = \d+ floats, reaching 2\^31"):
        tvm_scan.backward(table, index, emit)


def test_missing_n_raises_kernel_error(tvm_scan):
    scan = tvm_scan
    with pytest.raises(KernelError, match=r"n=32 .*rebuild: `snakemake build/kernels/llvm/manifest.json --cores 2 "
                                          r"--forcerun kernels_llvm` \(or delete build/kernels/llvm"):
        scan.forward(*potentials(2, 3, 32))


def test_matmul_scan_recomputes_a_row_that_underflows_in_log_space():
    """A message whose every term is below float32's range after the max shifts (the best state's
    transitions are 120 nats below the others', the others' messages 150 below the best): the
    product is 0, the row is recomputed in log space and equals the reference (about -120, not -inf)."""
    n = 4
    init = torch.tensor([[0.0, -150.0, -150.0, -150.0]])
    table = torch.zeros(1, n, n)
    table[0, 0, :] = -120.0
    index = torch.zeros(1, 1, dtype=torch.int32)
    emit = torch.zeros(1, 1, n)
    alpha = reference(init, table, index, emit)[0]
    assert torch.isfinite(alpha).all() and alpha[0, 1].max() < -119
    assert_close_scan(PRODUCTS.forward(init, table, index, emit), alpha)
    beta_table = table.transpose(1, 2).contiguous()      # the same case for the backward scan
    emit_b = init[:, None, :]
    assert_close_scan(PRODUCTS.backward(beta_table, index, emit_b), reference(init, beta_table, index, emit_b)[1])


@pytest.mark.parametrize("where", ["table", "emit"])
def test_matmul_gradient_with_nan_equals_the_reference(where):
    """A NaN potential: the matmul gradient of the blocks falls back to the reference's, NaN where it is."""
    init, table, index, emit = potentials(4, 6, 16, seed=4, dead_column=False)
    NAN_CASES[where](init, table, index, emit)
    alpha, beta = reference(init, table, index, emit)
    log_z, w = alpha[:, -1].logsumexp(-1), torch.rand(4, dtype=torch.float64)
    pots = (alpha, beta, table.double(), index, emit.double(), log_z, w)
    got, ref = PRODUCTS.grad_table(*pots), inference._grad_table(*pots)
    assert torch.equal(got.isnan(), ref.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.nan_to_num(), ref.nan_to_num())


def test_matmul_gradient_with_unused_blocks_equals_autograd():
    """The matmul transition gradient, one product per block in use (here most of 200 blocks unused, or a few
    shared), equals the float64 autograd reference."""
    for B, S, n, U in [(4, 9, 8, 3), (3, 7, 4, 200), (2, 5, 64, 6)]:
        init, table, index, emit = _double(*potentials(B, S, n, U=U, seed=7, dead_column=False))
        w = torch.rand(B, dtype=torch.float64)
        ours = _grads(lambda *a: log_partition_blocks(*a, scan=PRODUCTS)[0] * w, init, table, index, emit)
        ref = _grads(lambda *a: log_partition_blocks_autograd(*a) * w, init, table, index, emit)
        for g, r in zip(ours, ref):
            torch.testing.assert_close(g, r)


def test_matmul_backend_leaves_small_blocks_to_the_reference(monkeypatch):
    """Backend matmul as runs get it: blocks under MIN_STATES live states take the log-space reference
    (bit for bit), larger ones the products (within float32 rounding of it)."""
    import hmm.matmul_scan
    used = []
    for fn in ("scan_forward", "scan_backward", "grad_table"):
        real = getattr(hmm.matmul_scan, fn)
        monkeypatch.setattr(hmm.matmul_scan, fn, lambda *a, _f=real, _n=fn: used.append(_n) or _f(*a))
    scan = MatmulScan()
    for n in (MIN_STATES // 2, MIN_STATES):
        used.clear()
        pots = potentials(3, 5, n, seed=3, dead_column=False)
        got = _grads(lambda *a: log_partition_blocks(*a, scan=scan)[0], *pots)
        ref = _grads(lambda *a: log_partition_blocks(*a, scan=TorchScan)[0], *pots)
        if n < MIN_STATES:
            assert used == [] and all(torch.equal(g, r) for g, r in zip(got, ref))
        else:
            assert used == ["scan_forward", "scan_backward", "grad_table"]
            assert all(rel_err(g, r.double()) <= 1e-5 for g, r in zip(got, ref))


def test_matmul_scan_with_every_step_padding():
    """No blocks at all (U = 0): both scans carry their message, the gradient is empty."""
    init, _, _, emit = potentials(2, 3, 8)
    table, index = torch.zeros(0, 8, 8), torch.full((2, 3), -1, dtype=torch.int32)
    alpha, beta = PRODUCTS.forward(init, table, index, emit), PRODUCTS.backward(table, index, emit)
    assert torch.equal(alpha, init[:, None].expand(2, 4, 8)) and (beta == 0).all()
    # nothing emitted: Z sums the initial weights alone
    torch.testing.assert_close(log_partition_blocks(init, table, index, emit, scan=PRODUCTS)[0], init.logsumexp(-1))


def test_missing_directory_raises_kernel_error(tmp_path, llvm_dir):
    with pytest.raises(KernelError, match="no kernel manifest"):
        TVMScan.load(tmp_path)
    shutil.copytree(llvm_dir, tmp_path / "k")
    (tmp_path / "k" / kbuild.library_name(8)).unlink()
    with pytest.raises(KernelError, match=r"missing scan_n8.so .*snakemake"):
        TVMScan.load(tmp_path / "k").backward(*potentials(1, 2, 8)[1:])


def test_a_bundle_without_kernels_for_this_gpu_says_to_make_the_bundle_again(tmp_path):
    """A node bundle's cuda kernels (sm_90 only) on an sm_75 GPU: the advice is the bundle's option, not snakemake
    (the node has none); the same manifest outside a bundle still says how the pipeline rebuilds them."""
    manifest = {"target": "cuda", "abi": kbuild.ABI, "archs": ["sm_90"], "states": [64], "files": {},
                "kernels": [{"n": 64, "arch": "sm_90", "library": "scan_n64.so"}]}
    for where in ("bundle", "build"):
        kdir = tmp_path / where / "kernels" / "cuda"
        kdir.mkdir(parents=True)
        (kdir / kbuild.MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "bundle" / "BUNDLE.json").write_text("{}")
    with pytest.raises(KernelError) as err:
        krt._KernelDir(tmp_path / "bundle" / "kernels" / "cuda").pick(64, "sm_75")
    msg = str(err.value)
    assert "no cuda kernel for n=64 usable on sm_75" in msg and "snakemake" not in msg
    assert "`./repro bundle --out .carry/bundle --arch sm_90 sm_75`" in msg
    with pytest.raises(KernelError, match=r"add sm_75 to kernels.cuda_archs in the config, then rebuild: `snakemake"):
        krt._KernelDir(tmp_path / "build" / "kernels" / "cuda").pick(64, "sm_75")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {"flipped_byte": lambda d: _flip_byte(d / "scan_n4.so"),
               "truncated": lambda d: (d / "scan_n4.so").write_bytes((d / "scan_n4.so").read_bytes()[:(d / "scan_n4.so").stat().st_size // 2]),
               "other_n": lambda d: shutil.copyfile(d / "scan_n8.so", d / "scan_n4.so")}


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_library_raises_kernel_error(tmp_path, llvm_dir, how):
    """A flipped byte (silently wrong numbers), a truncated file (bus error) or another n's
    library (mismatched strides) are refused before TVM sees them, with one clear message."""
    kdir = tmp_path / "llvm"
    shutil.copytree(llvm_dir, kdir)
    expected = json.loads((kdir / kbuild.MANIFEST).read_text())["files"]["scan_n4.so"]["sha256"]
    CORRUPTIONS[how](kdir)
    actual = kbuild.sha256_file(kdir / "scan_n4.so")
    with pytest.raises(KernelError) as err:
        TVMScan.load(kdir).forward(*potentials(2, 3, 4))
    msg = str(err.value)
    assert f"{kdir / 'scan_n4.so'} does not match manifest.json" in msg
    assert f"expected sha256 {expected}, actual {actual}" in msg
    assert "rebuild: `snakemake build/kernels/llvm/manifest.json --cores 2 --forcerun kernels_llvm`" in msg


def test_library_hashed_once_per_process(tmp_path, llvm_dir, monkeypatch):
    shutil.copytree(llvm_dir, tmp_path / "llvm")
    calls = []
    real = krt.hashlib.sha256
    monkeypatch.setattr(krt.hashlib, "sha256", lambda data: calls.append(1) or real(data))
    for _ in range(3):
        TVMScan.load(tmp_path / "llvm").prepare(8)
    assert len(calls) == 1


def test_build_is_deterministic(tmp_path, llvm_dir):
    manifest = kbuild.build("llvm", [8], tmp_path, verbose=False)
    first = json.loads((llvm_dir / kbuild.MANIFEST).read_text())
    assert manifest["files"]["scan_n8.so"] == first["files"]["scan_n8.so"]


def test_check_cli_on_cpu(llvm_dir, tmp_path):
    out = tmp_path / "check.json"
    assert kcheck.main(["--kernels", str(llvm_dir), "--device", "cpu", "--states", "4", "64",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["n"], r["what"]): r for r in report["rows"]}
    assert set(rows) == {(n, w) for n in (4, 64) for w in kcheck.CHECKS} and report["ok"]
    assert all(r["ok"] and r["max_rel_err"] <= 1e-5 for r in rows.values() if r["what"] != "stream")
    assert rows[4, "stream"]["ok"] is None and "CUDA only" in rows[4, "stream"]["skipped"]


def test_cpu_kernels_run_without_importing_tvm(llvm_dir):
    """A CPU run's kernels load through TVM-FFI and TVM's runtime library alone: ``import tvm`` (its compiler's
    Python, seconds at every trainer's start) is not needed.  The largest kernel runs parallel over the batch on
    two TVM threads (the parallel launch the runtime library provides) and matches the reference."""
    script = textwrap.dedent(f"""
        import sys, time, torch
        start = time.perf_counter()
        from hmm.kernels import TVMScan
        from hmm.inference import TorchScan
        scan = TVMScan.load({str(llvm_dir)!r})
        init, table = torch.randn(6, 256).log_softmax(-1), torch.randn(3, 256, 256).log_softmax(-1)
        index, emit = torch.randint(-1, 3, (6, 9), dtype=torch.int32), torch.randn(6, 9, 256).log_softmax(-1)
        alpha, beta = scan.forward(init, table, index, emit), scan.backward(table, index, emit)
        assert "tvm" not in sys.modules, "the CPU kernels imported tvm"
        torch.testing.assert_close(alpha, TorchScan.forward(init, table, index, emit), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(beta, TorchScan.backward(table, index, emit), rtol=1e-5, atol=1e-4)
        print(f"loaded and ran in {{time.perf_counter() - start:.2f}} s without tvm")
    """)
    env = dict(os.environ, TVM_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)


def test_check_cli_catches_unwritten_output(llvm_dir, tmp_path, monkeypatch):
    """The poisoned output shows an element a kernel leaves unwritten; the exit status is 1."""
    real = TVMScan.backward

    def lazy_backward(self, table, index, emit, out=None):
        full = real(self, table, index, emit)
        if out is None:
            return full
        out[:, 1:] = full[:, 1:]  # "forgets" column 0
        return out
    monkeypatch.setattr(TVMScan, "backward", lazy_backward)
    out = tmp_path / "check.json"
    assert kcheck.main(["--kernels", str(llvm_dir), "--device", "cpu", "--states", "8", "--out", str(out)]) == 1
    rows = {r["what"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["backward"]["ok"] is False and rows["forward"]["ok"] and rows["gradient"]["ok"]


# ------------------------------------------------------------------------------------ CUDA


def test_cuda_build_on_cpu_machine(cuda_build):
    m = json.loads((cuda_build / kbuild.MANIFEST).read_text())
    assert m["target"] == "cuda" and m["archs"] == ["sm_90"] and m["states"] == CUDA_STATES
    for k in m["kernels"]:
        for key in ("library", "source", "binary"):
            assert m["files"][k[key]]["sha256"] == kbuild.sha256_file(cuda_build / k[key])
        assert (cuda_build / k["binary"]).stat().st_size > 1000


EMULATOR = r"""
// CPU stand-in for the CUDA features the scan kernels use: blocks run one after another,
// each CUDA thread is a std::thread, __syncthreads is a barrier, __shared__ is static.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>
struct Dim { int x; };
thread_local Dim threadIdx, blockIdx;
static std::barrier<>* g_barrier;
#define __global__
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static
#define CUDART_INF_F INFINITY
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
"""

EMULATOR_MAIN = r"""
template <class T> static std::vector<T> load(const char* path, size_t count) {
  std::vector<T> v(count);
  FILE* f = fopen(path, "rb");
  if (fread(v.data(), sizeof(T), count, f) != count) abort();
  fclose(f);
  return v;
}
int main(int argc, char** argv) {  // n B S U DIR (reads DIR/{init,table,index,emit}.bin, writes alpha, beta)
  int n = atoi(argv[1]), B = atoi(argv[2]), S = atoi(argv[3]), U = atoi(argv[4]);
  std::string dir = argv[5];
  auto init = load<float>((dir + "/init.bin").c_str(), (size_t)B * n);
  auto table = load<float>((dir + "/table.bin").c_str(), (size_t)U * n * n);
  auto index = load<int>((dir + "/index.bin").c_str(), (size_t)B * S);
  auto emit = load<float>((dir + "/emit.bin").c_str(), (size_t)B * S * n);
  std::vector<float> alpha((size_t)B * (S + 1) * n, NAN), beta(alpha.size(), NAN);
  float *init_ptr = init.data(), *table_ptr = table.data(), *emit_ptr = emit.data();
  float *alpha_ptr = alpha.data(), *beta_ptr = beta.data();
  int* index_ptr = index.data();
  for (int pass = 0; pass < 2; ++pass)
    for (int b = 0; b < B; ++b) {
      std::barrier<> barrier(THREADS);
      g_barrier = &barrier;
      std::vector<std::thread> threads;
      for (int t = 0; t < THREADS; ++t)
        threads.emplace_back([&, b, t] {
          blockIdx.x = b; threadIdx.x = t;
          if (pass == 0) forward_kernel(FORWARD_ARGS); else backward_kernel(BACKWARD_ARGS);
        });
      for (auto& th : threads) th.join();
    }
  FILE* f = fopen((dir + "/alpha.bin").c_str(), "wb"); fwrite(alpha.data(), sizeof(float), alpha.size(), f); fclose(f);
  f = fopen((dir + "/beta.bin").c_str(), "wb"); fwrite(beta.data(), sizeof(float), beta.size(), f); fclose(f);
}
"""


def _kernel_args(source, name):
    """The call arguments of kernel ``name``, from its signature (pointers are <buffer>_ptr)."""
    params = re.search(rf"{name}\(([^)]*)\)", source).group(1).split(",")
    return ", ".join(p.split()[-1] for p in params)


def _emulate(exe, case_dir, init, table, index, emit):
    """Run the emulated kernels on one input; alpha, beta [B, S+1, n] (NaN where unwritten)."""
    case_dir.mkdir()
    for name, x in (("init", init), ("table", table), ("index", index), ("emit", emit)):
        x.contiguous().numpy().tofile(case_dir / f"{name}.bin")
    (B, S, n), U = emit.shape, table.shape[0]
    subprocess.run([str(exe), str(n), str(B), str(S), str(U), str(case_dir)], check=True)
    read = lambda f: torch.from_file(str(case_dir / f), size=B * (S + 1) * n).view(B, S + 1, n)  # noqa: E731
    return read("alpha.bin"), read("beta.bin")


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ (C++20) needed to emulate CUDA on the CPU")
@pytest.mark.parametrize("n", CUDA_STATES)
def test_cuda_source_emulated_on_cpu(cuda_build, tmp_path, n):
    """The shipped .cu executed with CUDA threads as std::threads: values, -inf, padding, dead
    states, and NaN in init / a table entry / an emission propagating like the reference."""
    source = (cuda_build / f"scan_n{n}_sm_90.cu").read_text()
    body = source[source.index('extern "C" __global__'):].replace("alignas(64) ", "")
    threads = int(re.search(r"__launch_bounds__\((\d+)\)", body).group(1))
    cpp = tmp_path / "emu.cpp"
    cpp.write_text(EMULATOR + body + EMULATOR_MAIN)
    exe = tmp_path / "emu"
    subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", f"-DTHREADS={threads}",
                    f"-DFORWARD_ARGS={_kernel_args(body, 'forward_kernel')}",
                    f"-DBACKWARD_ARGS={_kernel_args(body, 'backward_kernel')}",
                    str(cpp), "-o", str(exe)], check=True, capture_output=True)
    cases = {"plain": None, **(NAN_CASES if n <= 32 else {})}  # n = 4: P = 1, n = 32: P = 2 threads per state
    for name, poison in cases.items():
        pots = potentials(3, 6, n, seed=3)
        if poison is not None:
            poison(*pots)
        alpha, beta = _emulate(exe, tmp_path / name, *pots)
        ref_alpha, ref_beta = reference(*pots)
        assert_close_scan(alpha, ref_alpha)
        assert_close_scan(beta, ref_beta)


STUB_DRIVER = ["cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
               "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
               "cuTensorMapEncodeTiled"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc needed to build a stub libcuda.so.1")
def test_cuda_library_loads_with_prebuilt_binary(cuda_build, tmp_path):
    """Loads a CUDA library the way a GPU node would (TVM's CUDA runtime, our compile hook
    serving the fatbin by source hash, no compiler) against a stub driver that fails every call;
    loading needs no driver call, so this covers everything short of running on a GPU.  A
    corrupt fatbin is refused before TVM sees it."""
    if torch.cuda.is_available():
        pytest.skip("a real driver is present; test_cuda_matches_reference covers loading")
    stub = tmp_path / "stub.c"
    stub.write_text("".join(f"int {f}(void) {{ return 999; }}\n" for f in STUB_DRIVER))
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", str(stub), "-o",
                    str(tmp_path / "libcuda.so.1")], check=True)
    shutil.copytree(cuda_build, tmp_path / "cuda")
    _flip_byte(tmp_path / "cuda" / "scan_n32_sm_90.fatbin")
    script = textwrap.dedent(f"""
        import pytest
        from hmm.kernels import runtime as rt
        kd = rt.TVMScan.load({str(cuda_build)!r}).dirs["cuda"]
        rt._import_tvm("cuda")
        rt._FALLBACK_COMPILE[0] = None      # a miss must fail, not compile
        fwd, bwd = kd.load(128, "sm_90")
        assert kd.pick(128, "sm_100")["arch"] == "sm_90"   # newer GPU: PTX of the older build
        with pytest.raises(rt.KernelError, match="sm_80"):
            kd.pick(128, "sm_80")
        with pytest.raises(rt.KernelError, match="scan_n32_sm_90.fatbin does not match.*kernels_cuda"):
            rt.TVMScan.load({str(tmp_path / "cuda")!r}).dirs["cuda"].load(32, "sm_90")
        print("loaded", fwd, bwd)
    """)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), TVM_USE_RUNTIME_LIB="1",
               PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "loaded" in res.stdout, res.stderr[-3000:]


def test_cuda_matches_reference(cuda_kernels):
    if not torch.cuda.is_available():
        print("skipped: torch sees no GPU (CUDA kernels were only compiled and emulated)")
        pytest.skip("torch sees no GPU")
    scan = TVMScan.load(cuda_kernels)
    states = scan.dirs["cuda"].manifest["states"]
    shapes = [(3, 1, states[0]), (2, 0, states[0])] + [(5, 7, n) for n in states] + [(16, 31, states[-1])]
    for B, S, n in shapes:
        pots = [x.cuda() for x in potentials(B, S, n)]
        alpha, beta = reference(*pots)
        assert_close_scan(scan.forward(*pots).cpu(), alpha.cpu())
        assert_close_scan(scan.backward(*pots[1:]).cpu(), beta.cpu())
    for poison in NAN_CASES.values():
        pots = potentials(4, 6, states[0], seed=4)
        poison(*pots)
        pots = [x.cuda() for x in pots]
        assert_close_scan(scan.forward(*pots).cpu(), reference(*pots)[0].cpu())


def test_trained_model_potentials_match_reference(llvm_dir, small_ptb, tmp_path):
    """Real potentials: a VLNHMM trained on PTB text (32 states, 4 blocks), scored by the TVM
    and matmul scans and by the float64 reference, at evaluation (n = k = 8: the cached table of every
    block pair; U = 16 blocks for 16 rows: the matmul scan's every-block product) and under dropout
    (n = k' = 4: the table of every block pair of the live states, and one start block per block for
    <eos> resets; the CPU's dense training path; U = 20: its per-row product)."""
    from pipeline.config import resolve_run
    from pipeline.data.corpus import Corpus, Windows
    from pipeline.training.models import build_model
    from pipeline.integrity import record
    from pipeline.training.train import train
    corpus = Corpus.load(small_ptb)
    vocab = corpus.vocab
    clusters = tmp_path / "clusters.tsv"
    clusters.write_text("word\tcluster\tbits\tcount\n" + "".join(
        f"{w}\t{i % 4}\t0\t{c}\n" for i, (w, c) in enumerate(zip(vocab.tokens, vocab.counts))))
    record(clusters)
    run = resolve_run({"name": "k", "dataset": "ptb", "model": "vlnhmm"}, {
        "train": {"device": "cpu", "evals_per_epoch": 1},
        "vlnhmm": {"num_states": 32, "num_clusters": 4, "hidden": 16, "epochs": 1}})
    torch.manual_seed(0)
    model = build_model(run, corpus, clusters)
    train(run, corpus, model, tmp_path / "out", tmp_path / "ckpt.pt")
    x, mask = Windows(corpus.splits["valid"], 16, 32).window(0)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            init, table, index, emit = model.potentials(model.params_for(training), x, mask, None, reset=False, reset_between=False)
        assert table.shape[-1] == (4 if training else 8) and table.shape[0] == (4 * 4 + 4 if training else 16)
        alpha, beta = reference(init, table, index, emit)
        for scan in (TVMScan(llvm_dir), PRODUCTS):
            assert_close_scan(scan.forward(init, table, index, emit), alpha)
            assert_close_scan(scan.backward(table, index, emit), beta)


def test_fast_exp_arithmetic_is_within_its_stated_error():
    """``_fast_exp``'s float32 arithmetic (the same steps and constants, emulated in numpy float32) against
    exp in float64 on [-87, 0]: max relative error 8.2e-8 (hmm/kernels/README.md), one float32 ulp."""
    import numpy as np

    from hmm.kernels.definition import EXP_POLY, LN2_HI, LN2_LO, LOG2E
    f32 = np.float32
    x = np.linspace(-87, 0, 2_000_001, dtype=np.float32)
    k = np.floor(x * f32(LOG2E) + f32(0.5)).astype(np.float32)
    r = (x - k * f32(LN2_HI) - k * f32(LN2_LO)).astype(np.float32)
    p = np.full_like(r, f32(EXP_POLY[0]))
    for coef in EXP_POLY[1:]:
        p = (p * r + f32(coef)).astype(np.float32)
    two_k = ((k.astype(np.int32) + 127) << 23).view(np.float32)
    got = ((p * r * r + r + f32(1.0)) * two_k).astype(np.float32)
    err = np.abs(got.astype(np.float64) / np.exp(x.astype(np.float64)) - 1).max()
    assert err < 8.5e-8, err
