"""From a run's settings to its model: the one place a Run becomes an nn.Module."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Run
from pipeline.data.corpus import EOS, Corpus

# the normalizer's operand precision that goes with torch's float32 matmul precision
NORMALIZER_PRECISION = {"highest": "fp32", "high": "tf32", "medium": "bf16"}


# The training step's transition (hmm.model.VLNHMM, ``lean_transition``): "factored" (MLP factors and
# row normalizers, never the [C', C'] matrix's gradient; fused in Triton on CUDA) or "dense" (the
# reference: log_softmax of the [C', C'] logits).  Both give the same numbers (tests/test_fast_step.py).
# On a CPU (bench.scale, 2 threads, h = 256, V = 10,000, B x T = 16 x 32; docs/benchmarks.md, "Which transition
# path") the dense one was faster at every size measured but one: M = 8 for |Z| 256 to 4,096, M = 128
# for |Z| 1,024 to 4,096; the factored one won at |Z| = 8,192, M = 128.  Its per-edge blocks cost
# ~ B T k'^2 and the dense matrix ~ C'^2 = M^2 k'^2, so it needs many blocks as well as many states:
# CPUs take it from both measured thresholds on; GPUs always (its reason to be: no [C', C'] gradient).
CPU_FACTORED_FROM_STATES = 8192
CPU_FACTORED_FROM_BLOCKS = 128


def transition_path(device_type: str, num_states: int, num_clusters: int) -> str:
    """The faster training transition for the device ("cpu" | "cuda") and size: "factored" or "dense"."""
    if device_type == "cpu" and (num_states < CPU_FACTORED_FROM_STATES or num_clusters < CPU_FACTORED_FROM_BLOCKS):
        return "dense"
    return "factored"


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
        from pipeline.data.clusters import load_clusters
        cluster_ids = load_clusters(clusters, corpus.vocab) if s.constraint == "brown" else None
        return build_vlnhmm(run, vocab_size, cluster_ids, corpus.vocab.index[EOS], kernel_root)
    raise ValueError(f"model {run.model!r} has no neural implementation here (kn5 runs through pipeline.training.kn5)")


def build_vlnhmm(run: Run, vocab_size: int, cluster_ids, eos_id: int,
                 kernel_root: Path | str = "build/kernels") -> torch.nn.Module:
    """The run's VLNHMM for cluster ids [V] (None: constraint none / uniform): scan backend and transition path."""
    from hmm import inference
    from hmm.model import VLNHMM
    s = run.settings
    scan = inference.TorchScan
    if s.backend == "tvm":
        from hmm.kernels import TVMScan
        scan = TVMScan(Path(kernel_root) / run.kernel_target)
    elif s.backend == "matmul":
        from hmm.matmul_scan import MatmulScan
        scan = MatmulScan()
    device_type = "cpu" if run.train.device == "cpu" else "cuda"  # auto: CUDA or a stop (pipeline.training.train)
    lean = transition_path(device_type, s.num_states, s.num_clusters) == "factored"
    return VLNHMM(s, vocab_size, cluster_ids, eos_id, seed=run.train.seed, scan=scan,
                  precision=NORMALIZER_PRECISION[run.train.matmul_precision], lean_transition=lean)
