"""From a run's settings to its model: the one place a Run becomes an nn.Module."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Run
from pipeline.data import EOS, Corpus

# the normalizer's operand precision that goes with torch's float32 matmul precision
NORMALIZER_PRECISION = {"highest": "fp32", "high": "tf32", "medium": "bf16"}


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable numbers (works on the meta device: nothing is allocated)."""
    return sum(p.numel() for p in model.parameters())


def build_model(run: Run, corpus: Corpus, clusters: Path | None = None,
                kernel_root: Path | str = "build/kernels") -> torch.nn.Module:
    """The run's model for ``corpus``'s vocabulary.

    ``clusters``: the Brown cluster file (vlnhmm, constraint brown); ``kernel_root``: the parent of
    the llvm/ and cuda/ kernel directories (vlnhmm, backend tvm; the run's device picks one).
    """
    s, vocab_size = run.settings, len(corpus.vocab)
    if run.model == "ff":
        from baselines.ff import FFLM
        return FFLM(vocab_size, s.order, s.hidden, s.dropout)
    if run.model == "lstm":
        from baselines.lstm import LSTMLM
        return LSTMLM(vocab_size, s.layers, s.hidden, s.dropout)
    if run.model == "vlnhmm":
        from hmm import inference
        from hmm.model import VLNHMM
        from pipeline.clusters import load_clusters
        scan = inference.TorchScan
        if s.backend == "tvm":
            from hmm.kernels import TVMScan
            scan = TVMScan(Path(kernel_root) / run.kernel_target)
        cluster_ids = load_clusters(clusters, corpus.vocab) if s.constraint == "brown" else None
        return VLNHMM(s, vocab_size, cluster_ids, corpus.vocab.index[EOS], seed=run.train.seed, scan=scan,
                      precision=NORMALIZER_PRECISION[run.train.matmul_precision])
    raise ValueError(f"model {run.model!r} has no neural implementation here (kn5 runs through pipeline.kn5)")
