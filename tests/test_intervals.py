"""How sure is a perplexity: per-document sums give back the reported perplexity for every model
kind, the bootstrap and the seed spread, seed repeats in the registry and in the tables."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import raw_paths
from pipeline import intervals
from pipeline.config import ConfigError, resolve_run, resolve_runs
from pipeline.data.corpus import Corpus, prepare
from pipeline.training.models import build_model
from pipeline.reporting.frames import build_figure, build_table
from pipeline.training.evaluate import evaluate
from pipeline.training.train import train
from test_train import round_robin_clusters

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".tools/kenlm/bin"
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
SMALL = {"train": {"device": "cpu", "evals_per_epoch": 1, "max_steps": 2, "seed": 5},
         "vlnhmm": {"num_states": 32, "num_clusters": 4, "hidden": 16, "batch_size": 4, "bptt": 16,
                    "eval_batch_size": 8},
         "lstm": {"hidden": 16, "batch_size": 4, "bptt": 16, "eval_batch_size": 8},
         "ff": {"hidden": 16, "batch_size": 4, "bptt": 16, "eval_batch_size": 8}}


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared machine: one thread (torch's spinning threads would only wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_wt2(tiny_raw, tmp_path_factory) -> Path:
    """The in-repository WikiText-2 prefix (train cut to 300 lines): articles as documents."""
    out = tmp_path_factory.mktemp("small_wt2")
    prepare(raw_paths(tiny_raw, "wt2"), out, "articles", {"train": 300})
    return out


def data_for(name, small_ptb, small_wt2) -> Path:
    return {"ptb": small_ptb, "wt2": small_wt2}[name]


# ------------------------------------------------------------------ the sums give back the perplexity
@pytest.mark.parametrize("model,dataset", [("ff", "ptb"), ("lstm", "wt2"), ("vlnhmm", "ptb"), ("vlnhmm", "wt2")])
def test_document_sums_give_back_perplexity(model, dataset, small_ptb, small_wt2, tmp_path):
    """Token by token (streams with carry, several windows) = the window sums training checks use; and the
    docs.npz a finished run writes gives back its metrics.json perplexity exactly."""
    data = data_for(dataset, small_ptb, small_wt2)
    torch.manual_seed(0)
    run = resolve_run({"name": f"t-{model}", "dataset": dataset, "model": model}, SMALL)
    corpus = Corpus.load(data)
    assert len(corpus.docs["test"]) > 1
    net = build_model(run, corpus, round_robin_clusters(data, 4))
    for split in ("valid", "test"):  # 8 streams of windows of 16: several windows, documents across streams
        ids = corpus.splits[split]
        ppl, _ = evaluate(net, ids, 8, 16, torch.device("cpu"))
        _, _, token_logp = evaluate(net, ids, 8, 16, torch.device("cpu"), per_token=True)
        assert len(token_logp) == len(ids) and np.all(token_logp < 0)
        logp, tokens = intervals.document_sums(token_logp, corpus.docs[split].numpy())
        assert tokens.sum() == len(ids) and len(logp) == len(corpus.docs[split])
        assert intervals.perplexity(logp, tokens) == pytest.approx(ppl, rel=1e-5)  # float32 window sums

    metrics = train(run, corpus, net, tmp_path / "out", tmp_path / "ckpt" / "ckpt.pt")
    docs = intervals.load_documents(tmp_path / "out" / "docs.npz")
    for split in ("valid", "test"):
        logp, tokens = docs[split]
        assert tokens.sum() == len(corpus.splits[split])
        # the scored weights (the best check's, left in the model) give that perplexity by the window sums
        ppl, _ = evaluate(net, corpus.splits[split], run.train.eval_batch_size, run.train.bptt, torch.device("cpu"))
        assert ppl == pytest.approx(metrics[f"{split}_ppl"], rel=1e-5)
        assert intervals.perplexity(logp, tokens) == pytest.approx(metrics[f"{split}_ppl"], rel=1e-12)
        lo, hi = metrics[f"{split}_ppl_interval"]
        assert lo < metrics[f"{split}_ppl"] < hi
    assert metrics["interval"]["resamples"] == 1000 and metrics["interval"]["bytes"] > 0


@pytest.mark.parametrize("dataset", ["ptb", "wt2"])
def test_kn5_document_sums_give_back_perplexity(dataset, small_ptb, small_wt2, tmp_path):
    if not (BIN / "lmplz").exists():
        pytest.skip(f"KenLM binaries missing in {BIN}: run ./repro setup")
    from pipeline.training import kn5

    data = data_for(dataset, small_ptb, small_wt2)
    spec = resolve_run({"name": "kn5", "dataset": dataset, "model": "kn5"}).result_spec()
    out = tmp_path / "run" / "metrics.json"
    kn5.main(["--spec", json.dumps(spec), "--data", str(data), "--bin-dir", str(BIN), "--work", str(tmp_path / "w"),
              "--out", str(out), "--discount-fallback"])
    metrics = json.loads(out.read_text())
    docs = intervals.load_documents(out.parent / "docs.npz")
    corpus = Corpus.load(data)
    for split in ("valid", "test"):
        logp, tokens = docs[split]
        assert len(logp) == len(corpus.docs[split]) and tokens.sum() == metrics[f"{split}_tokens"]
        assert intervals.perplexity(logp, tokens) == pytest.approx(metrics[f"{split}_ppl"], rel=1e-12)
        lo, hi = metrics[f"{split}_ppl_interval"]
        assert lo < metrics[f"{split}_ppl"] < hi


# ------------------------------------------------------------------ bootstrap, seeds, verdict
def test_bootstrap_is_fixed_and_narrows_with_more_documents():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 40, size=400)
    logp = -tokens * rng.uniform(3, 6, size=400)
    first = intervals.bootstrap(logp, tokens)
    assert first == intervals.bootstrap(logp, tokens)  # fixed seed
    lo, hi = first
    assert lo < intervals.perplexity(logp, tokens) < hi
    lo4, hi4 = intervals.bootstrap(np.tile(logp, 4), np.tile(tokens, 4))
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, rel=0.25)  # width ~ 1 / sqrt(documents)


def test_documents_must_cover_the_split():
    with pytest.raises(ValueError):
        intervals.document_sums(np.zeros(5), np.array([1, 3]))
    logp, tokens = intervals.document_sums(np.array([-1.0, -2, -3, -4, -5]), np.array([0, 2]))
    assert list(logp) == [-3, -12] and list(tokens) == [2, 3]


def test_seed_spread_widens_the_interval():
    one = intervals.combine([100.0], [[98.0, 103.0]])
    assert (one["ppl"], one["sd"], one["n"], one["lo"], one["hi"]) == (100.0, None, 1, 98.0, 103.0)
    two = intervals.combine([100.0, 104.0], [[98.0, 103.0], [102.0, 107.0]])
    sd = math.sqrt(8)
    assert two["ppl"] == 102 and two["sd"] == pytest.approx(sd) and two["n"] == 2
    assert two["lo"] == pytest.approx(102 - math.hypot(2, 1.959964 * sd))
    assert two["hi"] == pytest.approx(102 + math.hypot(3, 1.959964 * sd))
    assert intervals.combine([100.0], [None])["lo"] is None  # no bootstrap: no interval is made up
    assert intervals.beyond_pct(100, 98, 103) == 0
    assert intervals.beyond_pct(100, 105, 110) == pytest.approx(5.0)
    assert intervals.beyond_pct(200, 150, 190) == pytest.approx(-5.0)


# ------------------------------------------------------------------ seeds in the registry
def test_seeds_repeat_a_run_under_its_own_targets():
    config = {"datasets": {"ptb": {}}, "defaults": {"train": {"seeds": [3, 4]}},
              "runs": [{"name": "ff", "dataset": "ptb", "model": "ff", "rows": ["table1/ff"]},
                       {"name": "lstm", "dataset": "ptb", "model": "lstm", "seeds": [1111, 2222, 3333]},
                       {"name": "kn5", "dataset": "ptb", "model": "kn5"}]}
    runs = {r.key: r for r in resolve_runs(config)}
    assert list(runs) == ["ptb/ff", "ptb/ff@4", "ptb/lstm", "ptb/lstm@2222", "ptb/lstm@3333", "ptb/kn5"]
    assert [runs[k].train.seed for k in ("ptb/ff", "ptb/ff@4", "ptb/lstm@3333")] == [3, 4, 3333]
    assert runs["ptb/ff@4"].rows == ("table1/ff",) and runs["ptb/ff@4"].base == "ff"
    assert runs["ptb/ff@4"].out_dir == "results/runs/ptb/ff@4"
    assert runs["ptb/ff@4"].checkpoint == "build/checkpoints/ptb/ff@4/ckpt.pt"
    for bad in ({"seeds": []}, {"seeds": [1, 1]}, {"seeds": "1"}, {"seeds": [-1]}):
        with pytest.raises(ConfigError, match="seeds"):
            resolve_runs({**config, "defaults": {}, "runs": [{"name": "ff", "dataset": "ptb", "model": "ff", **bad}]})
    with pytest.raises(ConfigError, match="no seed"):
        resolve_runs({**config, "runs": [{"name": "kn5", "dataset": "ptb", "model": "kn5", "seeds": [1, 2]}]})
    with pytest.raises(ConfigError, match="@"):
        resolve_runs({**config, "runs": [{"name": "ff@1", "dataset": "ptb", "model": "ff"}]})


# ------------------------------------------------------------------ tables and figures
def _result(run, ppl: float, half: float) -> dict:
    spec = run.to_dict()
    metrics = {"spec": run.result_spec(), "status": "measured", "epochs": 1, "steps": 10}
    for split in ("valid", "test"):
        metrics[f"{split}_ppl"] = ppl
        metrics[f"{split}_ppl_interval"] = [ppl - half, ppl + half]
    return {"spec": spec, "metrics": metrics}


def test_rows_show_mean_sd_n_and_the_verdict():
    config = {"datasets": {"ptb": {}, "wt2": {}},
              "runs": [{"name": "ff", "dataset": "ptb", "model": "ff", "seeds": [1, 2], "rows": ["table1/ff"]},
                       {"name": "lstm", "dataset": "ptb", "model": "lstm", "rows": ["table1/lstm"]},
                       {"name": "vlnhmm-16384", "dataset": "ptb", "model": "vlnhmm", "num_states": 16384,
                        "seeds": [1, 2], "rows": ["fig3"]}]}
    runs = {r.key: r for r in resolve_runs(config)}
    paper_ff = next(r for r in PAPER["table1"]["rows"]["ptb"] if r["key"] == "ff")
    results = [_result(runs["ptb/ff"], paper_ff["test"] - 3, 1.0), _result(runs["ptb/ff@2"], paper_ff["test"] - 1, 1.0),
               _result(runs["ptb/lstm"], 200.0, 2.0)]
    df = build_table("table1", PAPER, results)
    ff = df[df.run == "ptb/ff"].iloc[0]
    assert ff.n == 2 and ff.seeds == "1, 2" and ff.test_ppl == pytest.approx(paper_ff["test"] - 2)
    assert ff.test_sd == pytest.approx(math.sqrt(2), abs=0.01)
    assert ff.test_lo < paper_ff["test"] < ff.test_hi and ff.test_beyond_pct == 0
    lstm = df[df.run == "ptb/lstm"].iloc[0]
    assert lstm.n == 1 and math.isnan(lstm.test_sd) and (lstm.test_lo, lstm.test_hi) == (198, 202)
    paper_lstm = next(r for r in PAPER["table1"]["rows"]["ptb"] if r["key"] == "lstm")["test"]
    assert lstm.test_beyond_pct == pytest.approx(100 * (198 - paper_lstm) / paper_lstm, abs=0.05)

    fig = build_figure("fig3", PAPER, [_result(runs["ptb/vlnhmm-16384"], 130, 1),
                                       _result(runs["ptb/vlnhmm-16384@2"], 132, 1)])
    ours = fig[fig.series.str.startswith("ours")]
    assert len(ours) == 1 and ours.iloc[0].n == 2 and ours.iloc[0].valid_ppl == 131
    assert ours.iloc[0].valid_lo < 130 and ours.iloc[0].valid_hi > 132


def test_a_seed_still_training_never_moves_the_mean_of_the_seeds_that_are_done():
    """A repeat still training (incomplete: provisional numbers) is left out of the row's mean while another
    seed is done, and the status says so; the row of seeds none of which is done shows the provisional ones."""
    config = {"datasets": {"ptb": {}, "wt2": {}},
              "runs": [{"name": "lstm", "dataset": "ptb", "model": "lstm", "seeds": [1, 2], "rows": ["table1/lstm"]},
                       {"name": "vlnhmm-16384", "dataset": "ptb", "model": "vlnhmm", "num_states": 16384,
                        "seeds": [1, 2], "rows": ["fig3"]}]}
    runs = {r.key: r for r in resolve_runs(config)}

    def training(run, ppl):
        result = _result(run, ppl, 1.0)
        result["metrics"].update(status="incomplete: last check at step 5 of 10", test_ppl=None)
        return result

    done, busy = _result(runs["ptb/lstm"], 100.0, 1.0), training(runs["ptb/lstm@2"], 400.0)
    for results in ([done, busy], [training(runs["ptb/lstm"], 400.0), _result(runs["ptb/lstm@2"], 100.0, 1.0)]):
        row = build_table("table1", PAPER, results).query("run.str.startswith('ptb/lstm')").iloc[0]
        assert row.n == 1 and row.valid_ppl == 100 and row.test_ppl == 100, row.to_dict()
        assert row.status.startswith("measured; not counted yet: seed ") and "(incomplete: last check" in row.status
    row = build_table("table1", PAPER, [training(runs["ptb/lstm"], 400.0), training(runs["ptb/lstm@2"], 300.0)])
    row = row[row.run == "ptb/lstm"].iloc[0]
    assert row.n == 2 and row.valid_ppl == 350 and row.status.startswith("incomplete") and "not counted" not in row.status

    fig = build_figure("fig3", PAPER, [_result(runs["ptb/vlnhmm-16384"], 130, 1),
                                       training(runs["ptb/vlnhmm-16384@2"], 400)])
    ours = fig[fig.series.str.startswith("ours")].iloc[0]
    assert ours.n == 1 and ours.valid_ppl == 130 and "not counted yet: seed 2" in ours.status


def test_node_runs_the_seed_repeats_after_its_priority_list():
    from conftest import merged_config
    from pipeline.node.bundle import node_plan

    config = merged_config("config/config.yaml", "config/tiny.yaml")
    plan = node_plan(config, ["ptb"], "llvm")
    listed = [k for k in config["priority"] if k.startswith("ptb/")]
    assert plan["priority"] == listed + ["ptb/ff@2222"]  # vlnhmm-64 is not in the list: neither is its repeat
    assert {"ptb/ff@2222", "ptb/vlnhmm-64@2222"} <= {r.key for r in plan["runs"]}
