"""Brown clusters of the training vocabulary: they define the HMM's emission blocks.

``python -m pipeline.clusters`` clusters the train token stream (the same ids the models see,
``<eos>`` included, so ``<eos>`` gets a cluster of its own choosing) with the
``brown-clustering`` package and writes a TSV: ``word  cluster  bits  count``, one row per
vocabulary word in vocabulary order.  Clusters are numbered by their position in the
merge tree (the common bit-string prefix of their words), so similar clusters are adjacent.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from pipeline.data import Corpus, Vocab
from pipeline.integrity import IntegrityError, record, verify


def _common_prefix(codes: list[str]) -> str:
    return os.path.commonprefix(codes)


def brown_clusters(tokens: list[str], num_clusters: int, alpha: float) -> tuple[dict[str, int], dict[str, str]]:
    """word -> cluster id and word -> bit string, for one token stream."""
    from brown_clustering import BigramCorpus, BrownClustering

    num_types = len(set(tokens))
    if num_types < num_clusters:
        raise ValueError(f"cannot make {num_clusters} clusters of {num_types} word types")
    corpus = BigramCorpus([tokens], alpha=alpha, min_count=1)
    model = BrownClustering(corpus, num_clusters)
    clusters = model.train()
    codes = model.codes()
    order = sorted(range(len(clusters)), key=lambda c: (_common_prefix([codes[w] for w in clusters[c]]), c))
    cluster_of = {w: rank for rank, c in enumerate(order) for w in clusters[c]}
    return cluster_of, codes


def write_clusters(path: Path, vocab: Vocab, cluster_of: dict[str, int], codes: dict[str, str]) -> None:
    missing = [t for t in vocab.tokens if t not in cluster_of]
    if missing:
        raise ValueError(f"{len(missing)} vocabulary words got no cluster, e.g. {missing[:5]}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("word\tcluster\tbits\tcount\n")
        for tok, count in zip(vocab.tokens, vocab.counts):
            f.write(f"{tok}\t{cluster_of[tok]}\t{codes.get(tok, '')}\t{count}\n")
    record(path)


def load_clusters(path: str | Path, vocab: Vocab) -> np.ndarray:
    """Cluster id of every vocabulary word, [V] int64, checked against its SHA-256 record and the vocabulary."""
    verify(path, f"remake it: `snakemake {path} --cores 2 --forcerun brown_clusters` (or delete it and rerun)")
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")][1:]
    words = tuple(r[0] for r in rows)
    if words != vocab.tokens:
        raise ValueError(f"{path} does not match the vocabulary ({len(words)} rows, vocabulary {len(vocab)})")
    cluster = np.array([int(r[1]) for r in rows], dtype=np.int64)
    sizes = np.bincount(cluster)
    if (sizes == 0).any():
        raise ValueError(f"{path}: clusters {np.flatnonzero(sizes == 0).tolist()} are empty")
    return cluster


def summary(vocab: Vocab, cluster: np.ndarray, seconds: float, examples: int = 12) -> str:
    sizes = np.bincount(cluster)
    counts = np.asarray(vocab.counts)
    mass = np.bincount(cluster, weights=counts) / counts.sum()
    lines = [
        f"# Brown clusters: {len(sizes)} clusters of {len(vocab):,} words ({seconds:.1f} s)",
        "",
        f"words per cluster: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}",
        f"share of train tokens per cluster: min {mass.min():.4f}, max {mass.max():.4f}",
        "",
        "| cluster | words | token share | most frequent words |",
        "|---:|---:|---:|---|",
    ]
    for c in range(len(sizes)):
        members = np.flatnonzero(cluster == c)[:examples]  # vocabulary is sorted by count
        words = " ".join(vocab.tokens[i] for i in members)
        lines.append(f"| {c} | {sizes[c]} | {mass[c]:.4f} | {words} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Brown-cluster a prepared dataset's training vocabulary.")
    p.add_argument("--data", required=True, type=Path, help="prepared dataset directory (python -m pipeline.data)")
    p.add_argument("--num-clusters", required=True, type=int)
    p.add_argument("--alpha", type=float, default=1e-4, help="add-alpha smoothing of the bigram counts")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--summary", required=True, type=Path)
    a = p.parse_args(argv)
    try:
        corpus = Corpus.load(a.data)
    except IntegrityError as err:
        raise SystemExit(f"error: {err}") from None
    tokens = [corpus.vocab.tokens[i] for i in corpus.splits["train"].tolist()]
    start = time.perf_counter()
    cluster_of, codes = brown_clusters(tokens, a.num_clusters, a.alpha)
    seconds = time.perf_counter() - start
    write_clusters(a.out, corpus.vocab, cluster_of, codes)
    a.summary.write_text(summary(corpus.vocab, load_clusters(a.out, corpus.vocab), seconds))
    print(f"[clusters] {a.out}: {a.num_clusters} clusters of {len(corpus.vocab):,} words in {seconds:.1f} s")


if __name__ == "__main__":
    main()
