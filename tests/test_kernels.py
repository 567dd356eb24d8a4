"""TVM scan kernels (hmm.kernels) against the PyTorch reference (hmm.inference).

Scans are compared with a float64 reference elementwise: |got - ref| <= 1e-5 * max(|ref|, 1),
with exactly the same -inf entries and no NaN.  Gradients (marginals) are compared with the
float64 autograd reference as max|got - ref| / max|ref| <= 1e-5 on log-normalised potentials;
on raw potentials, where alpha reaches ~200 and float32 rounding of alpha + beta - log Z alone
gives ~1e-5, the TVM gradient must be within twice the float32 PyTorch path's error.

S = 0 (a window of one token) is meaningful: alpha = init, beta = 0, log Z = logsumexp(init).

CUDA: the build (TVM codegen + nvcc fatbin) runs here; the exact CUDA source that ships is
executed by a CPU emulation of CUDA threads, blocks and barriers (g++); the GPU loading path
is exercised up to the driver with a stub libcuda.  Runs on a GPU only where torch sees one.
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

from hmm.inference import TorchScan, log_partition, log_partition_autograd, scan_backward, scan_forward
from hmm.kernels import KernelError, TVMScan
from hmm.kernels import build as kbuild

ROOT = Path(__file__).resolve().parents[1]
LLVM_STATES = [4, 8, 16, 64, 128, 256]
CUDA_STATES = [4, 32, 128]
NEG = float("-inf")


@pytest.fixture(scope="session")
def llvm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / "llvm"
    kbuild.build("llvm", LLVM_STATES, out, verbose=False)
    return out


@pytest.fixture(scope="session")
def scan(llvm_dir):
    return TVMScan.load(llvm_dir)


@pytest.fixture(scope="session")
def cuda_dir(tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH: the CUDA build compiles fatbins ahead of time")
    out = tmp_path_factory.mktemp("kernels") / "cuda"
    kbuild.build("cuda", CUDA_STATES, out, archs=["sm_90"], verbose=False)
    return out


def potentials(B, S, n, seed=0, normalised=False, dead_column=True):
    """init [B, n], edges [B, S, n, n] with random -inf entries, padding identity edges at
    the end of row 0, and a whole -inf row (and column) in one edge.

    dead_column=False keeps every state reachable (the -inf column aside, state 0 leads
    everywhere), as the float64 autograd reference is NaN for unreachable states."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(B, n, generator=g) * 2
    edges = torch.randn(B, S, n, n, generator=g) * 2
    if normalised:
        init, edges = init.log_softmax(-1), edges.log_softmax(-1)
    init[torch.rand(B, n, generator=g) < 0.25] = NEG
    init[:, 0] = 0.0 if normalised else init[:, 0].nan_to_num(neginf=0.0)  # some state stays alive
    edges[torch.rand(B, S, n, n, generator=g) < 0.3] = NEG
    edges[..., 0, 0] = 0.0  # state 0 always reachable
    if not dead_column:
        edges[..., 0, :] = edges[..., 0, :].nan_to_num(neginf=-1.0)
    if S >= 2:
        eye = torch.full((n, n), NEG).fill_diagonal_(0.0)
        edges[0, S // 2:] = eye  # row 0 ends early: padding is the log-identity
    if S >= 1 and n >= 4:
        edges[B - 1, 0, 1, :] = NEG  # state 1 has no successor
        if dead_column:
            edges[B - 1, 0, :, 2] = NEG  # state 2 unreachable: alpha = -inf there
    return init, edges


def assert_close_scan(got, ref, tol=1e-5):
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert not got.isnan().any(), "NaN in kernel output"
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref)), "-inf pattern differs"
    fin = torch.isfinite(ref)
    err = ((got.double()[fin] - ref[fin]).abs() / ref[fin].abs().clamp_min(1.0)).max().item() if fin.any() else 0.0
    assert err <= tol, f"relative error {err:.3g} > {tol}"


def rel_err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


SHAPES = [(16, 31, 128), (16, 31, 256), (3, 1, 4), (2, 0, 8), (5, 7, 16), (4, 9, 64)]


@pytest.mark.parametrize("B,S,n", SHAPES)
def test_scans_match_reference(scan, B, S, n):
    init, edges = potentials(B, S, n)
    assert_close_scan(scan.forward(init, edges), scan_forward(init.double(), edges.double()))
    assert_close_scan(scan.backward(edges), scan_backward(edges.double()))


def test_all_minus_inf_gives_minus_inf(scan):
    init, edges = potentials(3, 4, 8)
    init[1] = NEG  # nothing alive at all in stream 1
    edges[2] = NEG  # every transition impossible in stream 2
    alpha, beta = scan.forward(init, edges), scan.backward(edges)
    assert torch.isneginf(alpha[1]).all() and torch.isneginf(alpha[2, 1:]).all()
    assert torch.isneginf(beta[2, :-1]).all() and (beta[2, -1] == 0).all()
    assert_close_scan(alpha, scan_forward(init.double(), edges.double()))
    assert_close_scan(beta, scan_backward(edges.double()))


def _grads(init, edges, fn):
    i, e = init.clone().requires_grad_(), edges.clone().requires_grad_()
    fn(i, e).sum().backward()
    return i.grad, torch.zeros_like(e) if e.grad is None else e.grad  # None: S = 0


@pytest.mark.parametrize("B,S,n", [(16, 31, 128), (16, 31, 256), (3, 1, 4), (2, 0, 8), (4, 9, 64)])
def test_gradients_match_autograd(scan, B, S, n):
    # The float64 autograd reference is NaN where a whole column is -inf (logsumexp of nothing).
    for normalised in (True, False):
        init, edges = potentials(B, S, n, seed=1, normalised=normalised, dead_column=False)
        ref = _grads(init.double(), edges.double(), log_partition_autograd)
        got = _grads(init, edges, lambda i, e: log_partition(i, e, scan=scan)[0])
        errs = [rel_err(g, r) for g, r in zip(got, ref) if r.numel()]
        assert all(not g.isnan().any() for g in got)
        if normalised:
            assert max(errs) <= 1e-5, errs
        else:
            torch32 = _grads(init, edges, lambda i, e: log_partition(i, e, scan=TorchScan)[0])
            bound = [max(1e-5, 2 * rel_err(g, r)) for g, r in zip(torch32, ref) if r.numel()]
            assert all(e <= b for e, b in zip(errs, bound)), (errs, bound)


def test_marginals_with_dead_state_have_no_nan(scan):
    init, edges = potentials(4, 6, 16, seed=2)
    got = _grads(init, edges, lambda i, e: log_partition(i, e, scan=scan)[0])
    ref = _grads(init.double(), edges.double(), lambda i, e: log_partition(i, e, scan=TorchScan)[0])
    for g, r in zip(got, ref):
        assert not g.isnan().any() and rel_err(g, r) <= 1e-5


def test_missing_n_raises_kernel_error(scan):
    with pytest.raises(KernelError, match=r"n=32 .*snakemake --cores 2 build/kernels/llvm/manifest.json"):
        scan.forward(torch.zeros(2, 32), torch.zeros(2, 3, 32, 32))


def test_missing_directory_raises_kernel_error(tmp_path, llvm_dir):
    with pytest.raises(KernelError, match="no kernel manifest"):
        TVMScan.load(tmp_path)
    shutil.copytree(llvm_dir, tmp_path / "k")
    (tmp_path / "k" / kbuild.library_name(8)).unlink()
    with pytest.raises(KernelError, match=r"missing scan_n8.so .*snakemake"):
        TVMScan.load(tmp_path / "k").backward(torch.zeros(1, 2, 8, 8))


def test_build_is_deterministic(tmp_path, llvm_dir):
    manifest = kbuild.build("llvm", [8], tmp_path, verbose=False)
    first = json.loads((llvm_dir / kbuild.MANIFEST).read_text())
    assert manifest["files"]["scan_n8.so"] == first["files"]["scan_n8.so"]


# ------------------------------------------------------------------------------------ CUDA


def test_cuda_build_on_cpu_machine(cuda_dir):
    m = json.loads((cuda_dir / kbuild.MANIFEST).read_text())
    assert m["target"] == "cuda" and m["archs"] == ["sm_90"] and m["states"] == CUDA_STATES
    for k in m["kernels"]:
        for key in ("library", "source", "binary"):
            assert m["files"][k[key]]["sha256"] == kbuild.sha256_file(cuda_dir / k[key])
        assert (cuda_dir / k["binary"]).stat().st_size > 1000


EMULATOR = r"""
// CPU stand-in for the CUDA features the scan kernels use: blocks run one after another,
// each CUDA thread is a std::thread, __syncthreads is a barrier, __shared__ is static.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
static std::vector<float> load(const char* path, size_t count) {
  std::vector<float> v(count);
  FILE* f = fopen(path, "rb");
  if (fread(v.data(), sizeof(float), count, f) != count) abort();
  fclose(f);
  return v;
}
int main(int argc, char** argv) {  // n B S init.bin edges.bin alpha.bin beta.bin
  int n = atoi(argv[1]), B = atoi(argv[2]), S = atoi(argv[3]);
  std::vector<float> init = load(argv[4], (size_t)B * n);
  std::vector<float> edges = load(argv[5], (size_t)B * S * n * n);
  std::vector<float> alpha((size_t)B * (S + 1) * n), beta(alpha.size());
  float *init_ptr = init.data(), *edges_ptr = edges.data(), *alpha_ptr = alpha.data(), *beta_ptr = beta.data();
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
  FILE* f = fopen(argv[6], "wb"); fwrite(alpha.data(), sizeof(float), alpha.size(), f); fclose(f);
  f = fopen(argv[7], "wb"); fwrite(beta.data(), sizeof(float), beta.size(), f); fclose(f);
}
"""


def _kernel_args(source, name):
    """The call arguments of kernel ``name``, from its signature (pointers are <buffer>_ptr)."""
    params = re.search(rf"{name}\(([^)]*)\)", source).group(1).split(",")
    return ", ".join(p.split()[-1] for p in params)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ (C++20) needed to emulate CUDA on the CPU")
@pytest.mark.parametrize("n", CUDA_STATES)
def test_cuda_source_emulated_on_cpu(cuda_dir, tmp_path, n):
    source = (cuda_dir / f"scan_n{n}_sm_90.cu").read_text()
    body = source[source.index('extern "C" __global__'):].replace("alignas(64) ", "")
    threads = int(re.search(r"__launch_bounds__\((\d+)\)", body).group(1))
    cpp = tmp_path / "emu.cpp"
    cpp.write_text(EMULATOR + body + EMULATOR_MAIN)
    exe = tmp_path / "emu"
    subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", f"-DTHREADS={threads}",
                    f"-DFORWARD_ARGS={_kernel_args(body, 'forward_kernel')}",
                    f"-DBACKWARD_ARGS={_kernel_args(body, 'backward_kernel')}",
                    str(cpp), "-o", str(exe)], check=True, capture_output=True)
    B, S = 3, 6
    init, edges = potentials(B, S, n, seed=3)
    init.numpy().tofile(tmp_path / "init.bin")
    edges.numpy().tofile(tmp_path / "edges.bin")
    subprocess.run([str(exe), str(n), str(B), str(S), *(str(tmp_path / f) for f in
                    ("init.bin", "edges.bin", "alpha.bin", "beta.bin"))], check=True)
    read = lambda f: torch.from_file(str(tmp_path / f), size=B * (S + 1) * n).view(B, S + 1, n)  # noqa: E731
    assert_close_scan(read("alpha.bin"), scan_forward(init.double(), edges.double()))
    assert_close_scan(read("beta.bin"), scan_backward(edges.double()))


STUB_DRIVER = ["cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
               "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
               "cuTensorMapEncodeTiled"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc needed to build a stub libcuda.so.1")
def test_cuda_library_loads_with_prebuilt_binary(cuda_dir, tmp_path):
    """Loads a CUDA library the way a GPU node would (TVM's CUDA runtime, our compile hook
    serving the fatbin by source hash, no compiler) against a stub driver that fails every call;
    loading needs no driver call, so this covers everything short of running on a GPU."""
    if torch.cuda.is_available():
        pytest.skip("a real driver is present; test_cuda_matches_reference covers loading")
    stub = tmp_path / "stub.c"
    stub.write_text("".join(f"int {f}(void) {{ return 999; }}\n" for f in STUB_DRIVER))
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", str(stub), "-o",
                    str(tmp_path / "libcuda.so.1")], check=True)
    script = textwrap.dedent(f"""
        import pytest
        from hmm.kernels import runtime as rt
        kd = rt.TVMScan.load({str(cuda_dir)!r}).dirs["cuda"]
        rt._import_tvm("cuda")
        rt._FALLBACK_COMPILE[0] = None      # a miss must fail, not compile
        fwd, bwd = kd.load(128, "sm_90")
        assert kd.pick(128, "sm_100")["arch"] == "sm_90"   # newer GPU: PTX of the older build
        with pytest.raises(rt.KernelError, match="sm_80"):
            kd.pick(128, "sm_80")
        print("loaded", fwd, bwd)
    """)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), TVM_USE_RUNTIME_LIB="1",
               PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "loaded" in res.stdout, res.stderr[-3000:]


def test_cuda_matches_reference(cuda_dir):
    if not torch.cuda.is_available():
        print("skipped: torch sees no GPU (CUDA kernels were only compiled and emulated)")
        pytest.skip("torch sees no GPU")
    scan = TVMScan.load(cuda_dir)
    for B, S, n in [(16, 31, 128), (3, 1, 4), (2, 0, 32), (5, 7, 32)]:
        init, edges = potentials(B, S, n)
        init, edges = init.cuda(), edges.cuda()
        assert_close_scan(scan.forward(init, edges).cpu(), scan_forward(init.double(), edges.double()).cpu())
        assert_close_scan(scan.backward(edges).cpu(), scan_backward(edges.double()).cpu())


def test_trained_model_potentials_match_reference(llvm_dir, small_ptb, tmp_path):
    """Real potentials: a VLNHMM trained on PTB text (32 states, 4 blocks), scored by the TVM
    scans and by the float64 reference, at evaluation (n = k = 8) and under dropout (n = k' = 4)."""
    from pipeline.config import resolve_run
    from pipeline.data import Corpus, Windows
    from pipeline.models import build_model
    from pipeline.train import train
    from hmm.kernels import TVMScan
    corpus = Corpus.load(small_ptb)
    vocab = corpus.vocab
    clusters = tmp_path / "clusters.tsv"
    clusters.write_text("word\tcluster\tbits\tcount\n" + "".join(
        f"{w}\t{i % 4}\t0\t{c}\n" for i, (w, c) in enumerate(zip(vocab.tokens, vocab.counts))))
    run = resolve_run({"name": "k", "dataset": "ptb", "model": "vlnhmm"}, {
        "train": {"device": "cpu", "evals_per_epoch": 1},
        "vlnhmm": {"num_states": 32, "num_clusters": 4, "hidden": 16, "epochs": 1}})
    torch.manual_seed(0)
    model = build_model(run, corpus, clusters)
    train(run, corpus, model, tmp_path / "out", tmp_path / "ckpt.pt")
    scan = TVMScan(llvm_dir)
    x, mask = Windows(corpus.splits["valid"], 16, 32).window(0)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            init, edges = model.potentials(model.params_for(training), x, mask, None, reset=False)
        assert edges.shape[-1] == (4 if training else 8)
        assert_close_scan(scan.forward(init, edges), scan_forward(init.double(), edges.double()))
        assert_close_scan(scan.backward(edges), scan_backward(edges.double()))
