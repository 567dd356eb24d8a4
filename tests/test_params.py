"""Parameter counts of the paper's models, built exactly as the pipeline builds them, against the paper.

Models are built on the meta device (no memory is allocated), so counting the 432M-parameter
scalar HMM costs nothing.  Each count is compared with the paper's printed value (config/paper.yaml)
rounded as the paper rounds; the one count that cannot match (the scalar HMM) is checked against
its formula and reported beside the paper's 423M.
"""
import numpy as np
import pytest
import torch
import yaml

from pipeline.config import resolve_run
from pipeline.data.corpus import Corpus, Vocab
from pipeline.training.models import build_model, count_parameters

from conftest import ROOT

PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
VOCAB = {"ptb": 10_000, "wt2": 33_278}


def corpus(dataset: str) -> Corpus:
    V = VOCAB[dataset]
    tokens = tuple(f"w{i}" for i in range(V - 1)) + ("<eos>",)
    return Corpus(Vocab(tokens, (1,) * V), {}, {})


def count(dataset: str, model: str, **settings) -> int:
    """Parameters of the run's model as the pipeline builds it (clusters: any partition into M blocks)."""
    run = resolve_run({"name": "x", "dataset": dataset, "model": model, **settings})
    with torch.device("meta"):
        if model == "vlnhmm":  # the pipeline's builder, with synthetic clusters in place of a Brown cluster file
            from pipeline.training.models import build_vlnhmm
            V = VOCAB[dataset]
            ids = np.arange(V) % run.settings.num_clusters if run.settings.constraint == "brown" else None
            return count_parameters(build_vlnhmm(run, V, ids, eos_id=V - 1))
        return count_parameters(build_model(run, corpus(dataset)))


def paper_params(table: str, key: str, dataset: str | None = None) -> str:
    rows = PAPER[table]["rows"]
    rows = rows[dataset] if dataset else rows
    return next(r["params"] for r in rows if r["key"] == key)


@pytest.mark.parametrize("dataset, model, settings, table, key, exact", [
    ("ptb", "ff", {}, "table1", "ff", 2_889_216),
    ("wt2", "ff", {}, "table1", "ff", 8_848_384),
    ("ptb", "lstm", {}, "table1", "lstm", 3_622_672),
    ("wt2", "lstm", {}, "table1", "lstm", 9_605_118),
    ("ptb", "vlnhmm", {"num_states": 2**15}, "table1", "vlnhmm", 11_355_153),
    ("wt2", "vlnhmm", {"num_states": 2**15}, "table1", "vlnhmm", 17_337_599),
    ("ptb", "vlnhmm", {"num_states": 2**14}, "table2", "vlnhmm", 7_160_849),
    ("ptb", "vlnhmm", {"num_states": 2**14, "state_repr": "factored"}, "table4", "factored", 5_608_465),
])
def test_count_rounds_to_the_papers(dataset, model, settings, table, key, exact):
    n = count(dataset, model, **settings)
    assert n == exact
    assert f"{n / 1e6:.1f}M" == paper_params(table, key, dataset if table == "table1" else None)


def test_scalar_parameterization_is_its_formula_not_the_papers_423m():
    """Free start (C), transition (C x C) and emission (C x V) logits: C + C^2 + C V = 432.3M for
    C = 2^14, V = 10,000; the paper prints 423M, which no emission covering the vocabulary reaches."""
    C, V = 2**14, VOCAB["ptb"]
    n = count("ptb", "vlnhmm", num_states=C, neural=False)
    assert n == C + C * C + C * V
    assert paper_params("table2", "scalar") == "423M" and f"{n / 1e6:.1f}M" == "432.3M"


@pytest.mark.parametrize("dataset", ["ptb", "wt2"])
def test_kn5_ngram_entries_against_the_papers(dataset):
    """KN5's parameters are the n-gram entries of its ARPA model (lmplz, nothing pruned), read from the filed
    reference run (tests/test_kn5.py builds one afresh).  The paper does not say what it counted.  PTB's
    2,317,235 rounds to its 2M; WikiText-2's 5,760,821 would print 5.8M against its 5.7M: a deviation of 1 %,
    said in config/paper.yaml (the paper counted a little less, or cut its digits).  A pruned model or another
    vocabulary would be far off either."""
    import json

    metrics = json.loads((ROOT / "results/reference" / dataset / "kn5/metrics.json").read_text())
    assert metrics["params"] == sum(metrics["ngram_counts"].values()) and metrics["ngram_counts"]["1"] == (
        VOCAB[dataset] + 2)  # every word (<eos> as </s>), <s>, and KenLM's own <unk>
    paper = paper_params("table1", "kn5", dataset)
    digits = len(paper.removesuffix("M").partition(".")[2])
    ours = f"{metrics['params'] / 1e6:.{digits}f}M"
    if dataset == "ptb":
        assert ours == paper == "2M"
    else:
        assert (ours, paper) == ("5.8M", "5.7M") and abs(metrics["params"] / 5.7e6 - 1) < 0.015
