"""The CPU training precision: the fused output layer against log_softmax, the dropout's distribution, the
choice of cpu_precision per CPU kind, cpu_runs, and bf16 training agreeing with fp32 on real (small) data."""
import pytest
import torch
import torch.nn.functional as F

from baselines.dropout import Dropout
from baselines.output import token_logp
from pipeline import cpu
from pipeline.config import ConfigError, resolve_run, resolve_runs
from pipeline.data.corpus import Corpus
from pipeline.training import precision
from pipeline.training.errors import TrainingError
from pipeline.training.models import build_model
from pipeline.training.train import train
from tests.test_train import round_robin_clusters


def reference_logp(h, w, b, t):
    logits = h @ w.T + (0 if b is None else b)
    return F.log_softmax(logits, dim=-1).gather(1, t[:, None])[:, 0]


@pytest.mark.parametrize("chunk", [64, 10**6])  # a CPU's chunks; all rows at once, as on a GPU
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_logp_equals_log_softmax_values_and_gradients(bias, dtype, chunk, monkeypatch):
    import baselines.output

    monkeypatch.setattr(baselines.output, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    N, d, V = 150, 12, 300  # N not a multiple of the chunk: the last chunk is short
    h = torch.randn(N, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(V, d, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=dtype, requires_grad=True) if bias else None
    t = torch.randint(V, (N,), generator=g)
    upstream = torch.randn(N, generator=g, dtype=dtype)
    leaves = [x for x in (h, w, b) if x is not None]
    ours = token_logp(h, w, b, t)
    assert ours.dtype == dtype
    expected = reference_logp(h, w, b, t)
    torch.testing.assert_close(ours, expected)
    for a, e in zip(torch.autograd.grad((ours * upstream).sum(), leaves),
                    torch.autograd.grad((expected * upstream).sum(), leaves)):
        torch.testing.assert_close(a, e)


def test_token_logp_bf16_products_stay_close_and_return_fp32():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(200, 32, generator=g, requires_grad=True), torch.randn(500, 32, generator=g) * 0.2
    w.requires_grad_(True)
    t = torch.randint(500, (200,), generator=g)
    ours = token_logp(h, w, None, t, torch.bfloat16)
    assert ours.dtype == torch.float32
    expected = reference_logp(h, w, None, t)
    assert 1e-4 < (ours - expected).abs().max() < 0.05  # bf16 logits: ~3 significant digits (and rounded: not fp32)
    gh, gw = torch.autograd.grad(ours.sum(), (h, w))
    eh, ew = torch.autograd.grad(expected.sum(), (h, w))
    assert gh.dtype == gw.dtype == torch.float32
    assert (gh - eh).norm() / eh.norm() < 0.02 and (gw - ew).norm() / ew.norm() < 0.02


def test_dropout_keeps_one_minus_p_scaled_and_is_the_identity_in_eval():
    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(400_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad != 0, kept)
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


@pytest.mark.parametrize("kind", ["amx", "avx512_bf16", "none"])
def test_auto_takes_bf16_only_with_native_bf16_and_a_measured_gain(monkeypatch, kind):
    monkeypatch.setattr(cpu, "kind", lambda: kind)
    monkeypatch.setattr(precision, "MEASURED", {("ff", kind): (1.8, "test"), ("lstm", kind): (1.01, "test")})
    monkeypatch.setattr(precision, "NOT_EQUAL", {})
    dev = torch.device("cpu")
    ff, lstm, hmm = (precision.choose("auto", m, dev) for m in ("ff", "lstm", "vlnhmm"))
    if kind == "none":
        assert (ff.name, lstm.name, hmm.name) == ("fp32", "fp32", "fp32") and "no native bf16" in ff.reason
    else:
        assert ff.name == "bf16" and ff.dtype == torch.bfloat16 and "1.80x" in ff.reason
        assert lstm.name == "fp32" and "only 1.01x" in lstm.reason      # measured, not faster enough
        assert hmm.name == "fp32" and "not measured" in hmm.reason      # never measured on this kind
    assert precision.choose("fp32", "ff", dev).dtype is None
    if kind == "none":  # emulated bf16: ~8x slower than fp32 on a Zen 3, and no oneDNN bf16 LSTM
        with pytest.raises(TrainingError, match=r"needs a CPU with native bf16.*cpu_precision: auto"):
            precision.choose("bf16", "lstm", dev)
    else:
        assert precision.choose("bf16", "vlnhmm", dev).name == "bf16"
    assert precision.choose("auto", "ff", torch.device("cuda")).name == "fp32"  # GPUs: matmul_precision
    monkeypatch.setattr(precision, "NOT_EQUAL", {"ff": "drifted"})  # bf16 that moved the first epoch's ppl
    if kind != "none":
        assert precision.choose("auto", "ff", dev).reason.endswith("drifted")


def test_the_measured_speedups_are_the_committed_benchmarks():
    """Each MEASURED entry from bench.cpu equals the bf16 row's ratio in its committed CSV (2 decimals)."""
    import csv
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "results/bench"
    checked = 0
    for (model, kind), (ratio, source) in precision.MEASURED.items():
        if not source.startswith("bench.cpu"):
            continue  # measured elsewhere (the source says where)
        rows = list(csv.DictReader((bench / f"cpu_{kind}.csv").open()))
        row = next(r for r in rows if r["precision"] == "bf16" and r["model"].split("-")[0] == model)
        assert ratio == round(float(row["ratio"]), 2), (model, kind, ratio, row["ratio"])
        checked += 1
    assert checked >= 3


def test_cpu_runs_put_the_named_runs_and_their_seeds_on_the_cpu():
    config = {"datasets": {"ptb": {}}, "defaults": {},
              "runs": [{"name": "ff", "dataset": "ptb", "model": "ff", "seeds": [1, 2]},
                       {"name": "lstm", "dataset": "ptb", "model": "lstm"}],
              "cpu_runs": ["ptb/ff"]}
    devices = {r.key: r.train.device for r in resolve_runs(config)}
    assert devices == {"ptb/ff": "cpu", "ptb/ff@2": "cpu", "ptb/lstm": "auto"}
    with pytest.raises(ConfigError, match="cpu_runs: no run ptb/gru"):
        resolve_runs(config | {"cpu_runs": ["ptb/gru"]})


@pytest.mark.parametrize("model", ["ff", "lstm", "vlnhmm"])
def test_bf16_training_agrees_with_fp32(small_ptb, tmp_path, model, monkeypatch):
    """Same seed, same data, one epoch each: the fp32-scored valid ppl of bf16 training within 2 % of fp32's.
    On a CPU without native bf16 (which refuses cpu_precision: bf16) the products are emulated, slower but the
    same numbers: the FF and VLNHMM are compared so, told the CPU had AVX512-BF16; oneDNN builds no emulated
    bf16 LSTM."""
    if cpu.kind() == "none":
        if model == "lstm":
            pytest.skip("oneDNN has no bf16 LSTM without native bf16; compared where the CPU has it")
        monkeypatch.setattr(precision.cpu, "kind", lambda: "avx512_bf16")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small steps: one thread is as fast, and never waits on a busy core
    try:
        _compare(small_ptb, tmp_path, model)
    finally:
        torch.set_num_threads(threads)


def _compare(small_ptb, tmp_path, model):
    corpus = Corpus.load(small_ptb)
    clusters = round_robin_clusters(small_ptb, 4)
    settings = {"vlnhmm": {"num_states": 64, "num_clusters": 4, "backend": "torch"}}.get(model, {})
    ppl = {}
    for p in ("fp32", "bf16"):
        run = resolve_run({"name": f"t-{model}", "dataset": "ptb", "model": model, "device": "cpu", "seed": 3,
                           "hidden": 32, "batch_size": 8, "bptt": 16, "epochs": 1, "evals_per_epoch": 2,
                           "cpu_precision": p, **settings})
        torch.manual_seed(3)
        metrics = train(run, corpus, build_model(run, corpus, clusters), tmp_path / p, tmp_path / p / "ckpt.pt")
        assert metrics["cpu_precision"]["used"] == p and metrics["segments"][0]["precision"] == p
        ppl[p] = metrics["valid_ppl"]
    assert abs(ppl["bf16"] / ppl["fp32"] - 1) < 0.02, ppl
    assert ppl["bf16"] != ppl["fp32"], ppl  # the products were rounded: bf16 was used, not only recorded


def test_a_finished_cpu_run_is_filed_as_a_reference_with_its_records(tmp_path, capsys):
    """`./repro import --local`: a run that ended goes to the reference tree with provenance and SHA256SUMS;
    one in progress, one of other settings and one edited after it ended are refused and nothing is written."""
    from pipeline.integrity import SUMS, read_sums, record_dir, verify_dir
    from pipeline.node.importer import file_local

    config = {"datasets": {"ptb": {}}, "defaults": {}, "cpu_runs": ["ptb/ff"],
              "runs": [{"name": "ff", "dataset": "ptb", "model": "ff"}, {"name": "lstm", "dataset": "ptb", "model": "lstm"}]}
    runs = {r.key: r for r in resolve_runs(config)}
    runs_dir, logs, ref = tmp_path / "results/runs", tmp_path / "logs/runs", tmp_path / "reference"

    def trained(key, status, **spec_change):
        spec = runs[key].result_spec()
        spec["settings"] = spec["settings"] | spec_change
        d = runs_dir / key
        d.mkdir(parents=True)
        metrics = {"status": status, "spec": spec, "device": "cpu", "device_name": "AMD EPYC (2 cores)",
                   "valid_ppl": 150.0, "cpu_precision": {"setting": "auto", "used": "bf16", "reason": "test"},
                   "segments": [{"from_step": 0, "precision": "bf16", "bf16_kind": "avx512_bf16"}],
                   "provenance": {"commit": "abc", "date": "2026-12-06"}}
        (d / "metrics.json").write_text(__import__("json").dumps(metrics))
        (d / "curve.csv").write_text("step,valid_ppl\n1,150\n")
        record_dir(d, ["metrics.json", "curve.csv"])
        (logs / key).parent.mkdir(parents=True, exist_ok=True)
        (logs / f"{key}.log").write_text("[ptb/ff] done\n")

    trained("ptb/ff", "incomplete: last check at step 5")
    trained("ptb/lstm", "measured", hidden=128)
    result = file_local(["ptb/ff", "ptb/lstm"], config, ref, work=tmp_path)
    assert not result["written"] and not ref.exists()
    why = dict(result["refused"])
    assert "only a run that ended is filed" in why["ptb/ff"] and "`hidden`" in why["ptb/lstm"]

    import shutil
    shutil.rmtree(runs_dir)
    trained("ptb/ff", "measured")
    (runs_dir / "ptb/ff/curve.csv").write_text("step,valid_ppl\n1,99\n")  # edited after the run ended
    assert "does not match" in dict(file_local(["ptb/ff"], config, ref, work=tmp_path)["refused"])["ptb/ff"]

    shutil.rmtree(runs_dir)
    trained("ptb/ff", "measured")
    # the trainer's history of every segment, beside the checkpoint, is filed rather than the job's last-segment log
    history = tmp_path / runs["ptb/ff"].checkpoint
    history = history.with_name("train.log")
    history.parent.mkdir(parents=True)
    history.write_text("[ptb/ff] step 5\n[ptb/ff] resumed from ckpt.pt at step 5/9\n[ptb/ff] done\n")
    assert file_local(["ptb/ff"], config, ref, work=tmp_path)["imported"] == ["ptb/ff"]
    dest = ref / "ptb/ff"
    assert {"metrics.json", "provenance.json", "curve.csv", "train.log", SUMS} <= {p.name for p in dest.iterdir()}
    assert (dest / "train.log").read_text() == history.read_text()
    verify_dir(dest, sorted(read_sums(dest / SUMS)), "test")
    prov = __import__("json").loads((dest / "provenance.json").read_text())
    assert prov["cpu_precision"]["used"] == "bf16" and prov["segments"][0]["bf16_kind"] == "avx512_bf16"
    assert "bf16 training" in capsys.readouterr().out


def test_a_kn5_model_is_filed_with_its_log(tmp_path, capsys):
    """KN5 has no training settings, checkpoint or curve: filed with its metrics, scores and the job's log."""
    import json

    from pipeline.integrity import SUMS, read_sums, record_dir, verify_dir
    from pipeline.node.importer import file_local

    config = {"datasets": {"ptb": {}}, "defaults": {}, "runs": [{"name": "kn5", "dataset": "ptb", "model": "kn5"}]}
    run = {r.key: r for r in resolve_runs(config)}["ptb/kn5"]
    src, logs, ref = tmp_path / "results/runs/ptb/kn5", tmp_path / "logs/runs", tmp_path / "reference"
    src.mkdir(parents=True)
    metrics = {"status": "measured", "spec": run.result_spec(), "test_ppl": 141.19,
               "device_name": "AMD EPYC (2 cores)", "provenance": {"commit": "abc", "date": "2026-12-06"}}
    assert metrics["spec"]["train"] is None
    (src / "metrics.json").write_text(json.dumps(metrics))
    (src / "docs.npz").write_bytes(b"scores")
    record_dir(src, ["metrics.json", "docs.npz"])
    (logs / "ptb").mkdir(parents=True)
    (logs / "ptb/kn5.log").write_text(f"[ptb/kn5] valid ppl 148.01  test ppl 141.19\n"
                                      f"Reading {tmp_path.resolve()}/build/kenlm/ptb/kn5/train.txt\n")  # lmplz's
    assert file_local(["ptb/kn5"], config, ref, work=tmp_path)["imported"] == ["ptb/kn5"]
    dest = ref / "ptb/kn5"
    verify_dir(dest, sorted(read_sums(dest / SUMS)), "test")
    assert (dest / "train.log").read_text() == ("[ptb/kn5] valid ppl 148.01  test ppl 141.19\n"
                                                "Reading build/kenlm/ptb/kn5/train.txt\n")  # no local path
    assert json.loads((dest / "provenance.json").read_text())["epochs_planned"] is None
    out = capsys.readouterr().out
    assert "filed ptb/kn5" in out and "training" not in out


def test_a_cpu_run_row_names_its_cpu_and_training_precision():
    from pipeline.reporting.frames import _provenance
    metrics = {"device": "cpu", "device_name": "AMD EPYC (2 cores, native bf16: avx512_bf16)",
               "cpu_precision": {"setting": "auto", "used": "bf16", "reason": "test"}, "provenance": {}}
    assert _provenance(metrics)["device"] == "AMD EPYC (2 cores, native bf16: avx512_bf16); bf16 training"
    spanned = metrics | {"spans": ["AMD EPYC, avx512_bf16, bf16", "Intel Xeon, amx, bf16"]}
    assert "resumed on another CPU kind" in _provenance(spanned)["device"]
    assert _provenance({"device": "cuda", "device_name": "NVIDIA H100"})["device"] == "NVIDIA H100"


def test_a_segment_names_the_vector_unit_and_a_change_of_it_spans():
    """An AMD EPYC Zen 3 and a Zen 4 share a model name: the vector unit (and the bf16 kind) tell them apart,
    in each segment and in the device name; a run resumed across them spans two kinds."""
    from pipeline import cpu
    from pipeline.provenance import CPU_NAME
    from pipeline.training.results import machine_kinds

    assert cpu.record(1)["vector_unit"] == cpu.vector_unit() in ("AVX512", "AVX2", "older than AVX2")
    assert f", {cpu.vector_unit()}, native bf16: {cpu.kind()})" in CPU_NAME
    zen3 = {"cpu_model": "AMD EPYC", "vector_unit": "AVX2", "bf16_kind": "none", "precision": "fp32"}
    zen4 = zen3 | {"vector_unit": "AVX512"}
    assert len(machine_kinds([zen3, zen4])) == 2 and len(machine_kinds([zen3, dict(zen3)])) == 1
    older = {k: v for k, v in zen3.items() if k != "vector_unit"}  # a segment recorded before the field
    assert len(machine_kinds([older, zen3])) == 1


def test_a_run_names_the_commit_of_the_code_that_trained_it(small_ptb, tmp_path, monkeypatch):
    """A run's commit is that of the code its (last) training process started with, not the checkout's when it
    ended (commits land while a long run trains): in metrics.json and in the tables, also for records written
    before the trainer knew it (their last segment has it)."""
    from pipeline import provenance
    from pipeline.reporting.frames import _provenance
    from pipeline.training import train as train_module
    from pipeline.training.models import build_model

    monkeypatch.setattr(train_module, "commit", lambda: ("started-at", "git"))  # the process's start
    monkeypatch.setattr(provenance, "commit", lambda: ("checkout-at-end", "git"))  # HEAD when it ends
    run = resolve_run({"name": "t", "dataset": "ptb", "model": "ff", "device": "cpu", "epochs": 1, "hidden": 8})
    corpus = Corpus.load(small_ptb)
    metrics = train(run, corpus, build_model(run, corpus), tmp_path / "out", tmp_path / "ckpt.pt")
    assert metrics["segments"][-1]["commit"] == metrics["provenance"]["commit"] == "started-at"
    older = {"provenance": {"commit": "checkout-at-end"}, "segments": [{"commit": "a"}, {"commit": "b"}]}
    assert _provenance(older)["commit"] == "b" and _provenance({"provenance": {"commit": "c"}})["commit"] == "c"


FAULTS_PER_STEP = """
import resource, sys, torch
from pipeline import cpu
if sys.argv[1] == "keep":
    assert cpu.keep_freed_memory()
from baselines.output import token_logp
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
h = torch.randn(4096, 64, generator=g, requires_grad=True)
w = torch.randn(10000, 64, generator=g, requires_grad=True)
t = torch.randint(10000, (4096,), generator=g)
dtype = torch.bfloat16 if cpu.kind() != "none" else None  # a CPU without native bf16 trains in fp32
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    token_logp(h, w, None, t, dtype).sum().backward()
    h.grad = w.grad = None
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not cpu.keep_freed_memory(), reason="glibc only (Linux)")
def test_a_training_steps_large_tensors_reuse_freed_memory():
    """keep_freed_memory (as the Trainer sets it on a CPU): the output layer's forward and backward (82 MB
    of bf16 logits) touch no new pages once warm, where glibc's defaults fault ~23,000 pages of 4 KiB in
    afresh every step.  Each in a fresh process (a long test session's heap is fragmented by others).  In
    the precision a run trains in here: fp32 (164 MB of logits) on a CPU without native bf16, where bf16
    products are emulated (~8x slower than fp32 on a Zen 3: minutes for this test)."""
    import subprocess
    import sys
    from pathlib import Path

    def faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], cwd=Path(__file__).parent.parent,
                             capture_output=True, text=True, check=True).stdout
        return [int(n) for n in out.split()]

    kept, default = faults("keep"), faults("default")
    # 8 warm steps judged on their median: a few may fault a burst when the heap grows for something else
    # (seen in fresh CIs: [..., 0, 0, 14231] and [22689, 2500, 0, 1, 1562, 16875, ...]); glibc's defaults fault
    # every step (below), so a keep_freed_memory that stopped working still fails here
    warm = sorted(kept[4:])
    assert warm[len(warm) // 2] < 1000, kept
    assert min(default[4:]) > 10_000, default  # the case it mends is there


def test_the_cpu_benchmark_writes_its_rows_and_plot_for_one_model(tmp_path):
    """bench.cpu at the LSTM's paper size, one timed step: both precisions with their floors and the
    target of this CPU's kind on the row auto trains in (the figures themselves are not checked here)."""
    import pandas as pd

    from bench import cpu as bench_cpu

    out = tmp_path / "cpu.csv"
    bench_cpu.main(["--models", "lstm", "--steps", "1", "--warmup", "1", "--threads", "1", "--out", str(out)])
    df = pd.read_csv(out)
    assert list(df.columns) == bench_cpu.COLUMNS
    timed = bench_cpu.precisions()  # fp32 alone on a CPU without native bf16
    assert list(df.model) == ["gemm-2048"] * len(timed) + ["lstm"] * len(timed)
    assert list(df.precision[-len(timed):]) == list(timed)
    lstm = df[df.model == "lstm"].set_index("precision")
    assert (lstm.ms > 0).all() and (lstm.floor_ms > 0).all() and (lstm.ms_median >= lstm.ms).all()
    assert (lstm.bf16_kind == cpu.kind()).all()
    chosen = precision.choose("auto", "lstm", torch.device("cpu")).name
    assert lstm.target.notna().tolist() == [p == chosen for p in lstm.index]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_the_scan_benchmark_times_both_backends_on_the_same_steps(tmp_path):
    """bench.cpu_scans at the M = 8 run's size, one timed step: a row per backend, the same training losses
    (same weights and windows: the backends compute the same numbers), speed-ups against torch."""
    import pandas as pd

    from bench import cpu_scans

    out = tmp_path / "scans.csv"
    cpu_scans.main(["--models", "vlnhmm-1024-m8", "--steps", "1", "--warmup", "1", "--eval-repeats", "1",
                    "--threads", "1", "--out", str(out)])
    df = pd.read_csv(out).set_index("backend")
    assert list(df.columns) == cpu_scans.COLUMNS[:1] + cpu_scans.COLUMNS[2:]
    assert list(df.index) == ["torch", "matmul"] and (df.n_train == 64).all() and (df.n_eval == 128).all()
    assert (df.ms > 0).all() and (df.eval_ms > 0).all() and df.step_speedup["torch"] == 1.0
    assert abs(df.loss_last["torch"] - df.loss_last["matmul"]) < 1e-4 * df.loss_last["torch"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_the_first_epoch_benchmark_stops_at_once_on_a_cpu_without_native_bf16(monkeypatch):
    """Its bf16 epoch would stop the run (cpu_precision: bf16 needs native bf16): it says so before the fp32 epoch."""
    from bench import first_epoch

    monkeypatch.setattr(cpu, "kind", lambda: "none")
    monkeypatch.setattr(first_epoch, "one_epoch", lambda *a, **k: pytest.fail("trained on a CPU without bf16"))
    with pytest.raises(SystemExit, match="no native bf16"):
        first_epoch.main(["--runs", "ptb/ff"])
