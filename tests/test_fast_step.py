"""The fast training step: nothing in it reads a value back to the host (no GPU synchronization).

On a GPU every host read of device data (``.item()``, ``int(t)``, ``bool(t)``, ``nonzero``,
``unique``, boolean indexing, ...) makes the CPU wait for the GPU.  Those reads all pass through a
few aten operators, so a dispatch mode that records them (:class:`pipeline.training.timing.CountHostReads`)
counts the synchronizations a step would make, on the CPU as well (the same Python and aten calls
run on either device).  The step counted
is the training loop's own (:meth:`pipeline.training.train.Trainer.step`).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline.config import resolve_run
from pipeline.data.corpus import Corpus, Vocab, Windows
from pipeline.integrity import record
from pipeline.training.timing import CountHostReads
from pipeline.training.train import Trainer

V = 60
SETTINGS = {
    "brown": {"num_states": 64, "num_clusters": 4},
    "brown-factored-eos": {"num_states": 64, "num_clusters": 4, "state_repr": "factored", "eos_reset": "train-in-and-between-windows"},
    "none": {"num_states": 16, "num_clusters": 1, "constraint": "none"},
    "uniform-transition-dropout": {"num_states": 32, "constraint": "uniform", "states_per_word": 8,
                                   "state_dropout": 0.0, "transition_dropout": 0.5},
}


def synthetic_corpus(seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    tokens = tuple(f"w{i}" for i in range(V - 1)) + ("<eos>",)
    splits = {s: torch.as_tensor(rng.integers(0, V, n)) for s, n in (("train", 2000), ("valid", 200), ("test", 200))}
    docs = {s: torch.tensor([0]) for s in splits}
    return Corpus(Vocab(tokens, (1,) * V), splits, docs)


# transition dropout takes the dense transition whatever lean says: its factored case would be the dense one again
CASES = [(name, lean) for name in SETTINGS for lean in (True, False)
         if not (lean and SETTINGS[name].get("transition_dropout"))]


@pytest.mark.parametrize("name, lean", CASES, ids=[f"{n}-{'factored' if lean else 'dense'}" for n, lean in CASES])
def test_training_step_reads_nothing_back(name, lean, tmp_path, monkeypatch):
    """The GPU's step (a CPU step also takes each distinct carried state once, reading their count back)."""
    import hmm.model
    from pipeline.training.models import build_model
    monkeypatch.setattr(hmm.model, "distinct_carried_states", hmm.model.all_carried_states)
    corpus = synthetic_corpus()
    clusters = tmp_path / "c.tsv"
    m = SETTINGS[name].get("num_clusters", 1)
    clusters.write_text("word\tcluster\tbits\tcount\n" + "".join(f"w{i}\t{i % m}\t0\t1\n" for i in range(V - 1))
                        + f"<eos>\t{(V - 1) % m}\t0\t1\n")
    record(clusters)
    run = resolve_run({"name": "s", "dataset": "ptb", "model": "vlnhmm", "hidden": 16, "device": "cpu",
                       "batch_size": 4, "bptt": 8, **SETTINGS[name]})
    model = build_model(run, corpus, clusters if run.settings.constraint == "brown" else None)
    model.lean_transition = lean  # both training transitions (a CPU run of this size gets the dense one)
    trainer = Trainer(run, corpus, model, tmp_path / "out", tmp_path / "ckpt.pt")
    windows = Windows(corpus.splits["train"], 4, 8)
    for w in range(3):  # the first window (no carry) and two with a carried posterior
        x, mask = windows.window(w)
        ntok = int(mask.sum())
        with CountHostReads() as counter:
            trainer.step(x, mask, ntok)
        assert counter.reads == [], f"window {w}: {counter.reads}"


def test_the_matmul_scans_read_back_and_so_are_not_captured(tmp_path):
    """Backend matmul (made for the CPU) reads values back each step: the model says it cannot be captured,
    so cuda_graph leaves such a run eager (pipeline.training.graphs)."""
    from pipeline.training.models import build_model
    corpus = synthetic_corpus()
    run = resolve_run({"name": "s", "dataset": "ptb", "model": "vlnhmm", "hidden": 16, "device": "cpu",
                       "batch_size": 4, "bptt": 8, "backend": "matmul", **SETTINGS["none"]})
    model = build_model(run, corpus)
    assert model.capturable is False and model.scan.name == "matmul"
    trainer = Trainer(run, corpus, model, tmp_path / "out", tmp_path / "ckpt.pt")
    x, mask = Windows(corpus.splits["train"], 4, 8).window(0)
    with CountHostReads() as counter:
        trainer.step(x, mask, int(mask.sum()))
    assert counter.reads


def test_the_counter_sees_host_reads():
    """The counter is not blind: each way of reading device data back is recorded."""
    t = torch.tensor([1.0, 2.0, 2.0])
    with CountHostReads() as counter:
        t.sum().item()
        int(t[0])
        bool(t[0] > 0)
        t.nonzero()
        torch.unique(t, dim=0)
        t[t > 1]
        t.repeat_interleave(torch.tensor([1, 2, 3]))
        torch.bincount(torch.tensor([0, 2]))
        torch.equal(t, t)
        torch.allclose(t, t)
    assert len(counter.reads) == 10, counter.reads


def test_capture_helpers_keep_the_carry_structure():
    """pipeline.training.graphs' static buffers: a carry's tensors cloned and copied in place, any structure;
    a shorter window padded to bptt with masked positions (the capture itself needs a GPU)."""
    from hmm.model import Carry
    from pipeline.training.graphs import clone, copy_into, leaves, pad_window
    carry = Carry(torch.arange(6).view(2, 3), torch.randn(2, 3), torch.tensor([4, 5]), torch.tensor([True, False]))
    for c in (carry, (torch.randn(2, 4), torch.randn(2, 4)), torch.arange(3), None):
        static = clone(c)
        assert all(a is not b and torch.equal(a, b) for a, b in zip(leaves(static), leaves(c)))
        for t in leaves(c):
            t.add_(1) if t.dtype != torch.bool else t.logical_not_()
        copy_into(static, c)
        assert all(torch.equal(a, b) for a, b in zip(leaves(static), leaves(c)))
    x, mask = torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)
    px, pm = pad_window(x, mask, 8)
    assert px.shape == pm.shape == (2, 8) and int(pm.sum()) == 10 and not pm[:, 5:].any()


def test_padded_window_scores_like_the_short_one():
    """The model scores a window padded to bptt exactly like the short window (what a replayed graph
    relies on for an epoch's last window)."""
    from hmm.config import HMMConfig
    from hmm.model import VLNHMM
    from pipeline.training.graphs import pad_window
    model = VLNHMM(HMMConfig(num_states=16, num_clusters=4, hidden=8, state_dropout=0.0), V,
                   np.arange(V) % 4, eos_id=V - 1).eval()
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randint(0, V, (3, 5), generator=g), torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    short, _ = model(x, mask, None)
    padded, _ = model(*pad_window(x, mask, 9), None)
    assert torch.allclose(short, padded)


def test_each_device_and_size_gets_its_faster_transition():
    """The measured crossover (pipeline.training.models): dense on a CPU below 8,192 states or 128 blocks, factored
    from there and on every GPU; the model reports the path it trains with."""
    from hmm.config import HMMConfig
    from hmm.model import VLNHMM
    from pipeline.training.models import transition_path
    assert transition_path("cpu", 1024, 8) == transition_path("cpu", 4096, 128) == "dense"
    assert transition_path("cpu", 8192, 8) == transition_path("cpu", 65536, 64) == "dense"
    assert transition_path("cpu", 8192, 128) == transition_path("cpu", 32768, 128) == "factored"
    assert transition_path("cuda", 64, 8) == transition_path("cuda", 32768, 128) == "factored"
    cfg = HMMConfig(num_states=16, num_clusters=4, hidden=8)
    assert VLNHMM(cfg, V, np.arange(V) % 4, V - 1, lean_transition=True).transition_path == "factored"
    assert VLNHMM(cfg, V, np.arange(V) % 4, V - 1, lean_transition=False).transition_path == "dense"
    scalar = HMMConfig(num_states=16, num_clusters=4, hidden=8, neural=False)
    assert VLNHMM(scalar, V, np.arange(V) % 4, V - 1, lean_transition=True).transition_path == "dense"
