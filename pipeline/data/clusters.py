"""Brown clusters of the training vocabulary: they define the HMM's emission blocks.

``python -m pipeline.data.clusters`` clusters the train token stream (the same ids the models see,
``<eos>`` included, so ``<eos>`` gets a cluster of its own choosing) with the
``brown-clustering`` package and writes a TSV: ``word  cluster  bits  count``, one row per
vocabulary word in vocabulary order.  Clusters are numbered by their position in the
merge tree (the common bit-string prefix of their words), so similar clusters are adjacent.

``--paths FILE`` reads a ``wcluster`` ``paths`` file instead (``bits TAB word TAB count``, sorted
by bits), as the released code does: cluster id = rank of the bit string's first appearance;
vocabulary words missing from the file (PTB: ``<eos>``) join the last cluster.  Our vocabulary
has no ``<pad>``, so none enters it.  ``--fetch-authors DATASET`` downloads the authors' file
for M clusters from harvardnlp/hmm-lm at a pinned commit and checks its sha256
(:mod:`pipeline.authors`); ``--paths FILE --authors DATASET`` checks a local copy the same way.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from pipeline.authors import AUTHORS_SHA256, ClusterFileError, authors_source  # noqa: F401 (re-exported)
from pipeline.data.corpus import Corpus, Vocab
from pipeline.integrity import IntegrityError, record, sha256, verify


def check_sha256(path: Path, expected: str, what: str) -> None:
    """Raise ClusterFileError naming ``path`` and the expected hash if the file is missing or differs."""
    if not Path(path).is_file():
        raise ClusterFileError(f"{path} does not exist; expected {what} with sha256 {expected}")
    actual = sha256(Path(path))
    if actual != expected:
        raise ClusterFileError(f"{path} is not {what}: sha256 {actual}, expected {expected} "
                               "(truncated, edited or another file; delete it and fetch it again)")


def fetch_authors(dataset: str, num_clusters: int, out: Path) -> None:
    """Download the authors' paths file to ``out`` (via ``out.part``, kept only if its sha256 matches)."""
    import urllib.request

    url, expected = authors_source(dataset, num_clusters)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    print(f"[clusters] downloading {url}")
    with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
        f.write(r.read())
    try:
        check_sha256(part, expected, f"the authors' {url}")
    except ClusterFileError:
        part.unlink()
        raise
    part.replace(out)


def read_paths(path: Path, vocab: Vocab) -> tuple[np.ndarray, dict[str, str], list[str]]:
    """A wcluster ``paths`` file -> (cluster id of every vocabulary word [V], word -> bits, file words
    not in the vocabulary).  Ids by first appearance of a bit string; missing words join the last."""
    cluster_of_bits: dict[str, int] = {}
    bits_of: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 3 or set(fields[0]) - {"0", "1"} or not fields[2].isdigit():
                raise ClusterFileError(f"{path}, line {number}: not 'bits TAB word TAB count' "
                                       f"(a truncated or foreign file?): {line.rstrip()[:80]!r}")
            cluster_of_bits.setdefault(fields[0], len(cluster_of_bits))
            bits_of[fields[1]] = fields[0]
    if not cluster_of_bits:
        raise ClusterFileError(f"{path} is empty")
    last = len(cluster_of_bits) - 1
    cluster = np.array([cluster_of_bits[bits_of[t]] if t in bits_of else last for t in vocab.tokens], dtype=np.int64)
    unknown = [w for w in bits_of if w not in vocab.index]
    return cluster, bits_of, unknown


def _common_prefix(codes: list[str]) -> str:
    return os.path.commonprefix(codes)


def _cache_compiled_helpers() -> None:
    """Keep brown-clustering's numba-compiled helpers on disk between processes.

    The package compiles them afresh in every process (about 10 s of a 20 s clustering of a tiny slice);
    with numba's cache a later process loads them.  The cache lies beside the package's source, or in the
    user's cache folder where that is read-only, and numba recompiles when the source or the CPU changes.
    """
    from brown_clustering import helper
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for fn in vars(helper).values():
        if isinstance(fn, Dispatcher) and isinstance(fn._cache, NullCache):
            fn.enable_caching()


def brown_clusters(tokens: list[str], num_clusters: int, alpha: float) -> tuple[dict[str, int], dict[str, str]]:
    """word -> cluster id and word -> bit string, for one token stream."""
    from brown_clustering import BigramCorpus, BrownClustering

    _cache_compiled_helpers()
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


def summary(vocab: Vocab, cluster: np.ndarray, seconds: float | None, examples: int = 12) -> str:
    sizes = np.bincount(cluster)
    counts = np.asarray(vocab.counts)
    mass = np.bincount(cluster, weights=counts) / counts.sum()
    lines = [
        f"# Brown clusters: {len(sizes)} clusters of {len(vocab):,} words"
        + ("" if seconds is None else f" ({seconds:.1f} s)"),
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


def from_paths(paths: Path, data: Path, num_clusters: int, out: Path, summary_path: Path) -> None:
    """Our cluster TSV (and summary) from a wcluster ``paths`` file."""
    vocab = Corpus.load(data).vocab
    cluster, bits_of, unknown = read_paths(paths, vocab)
    found = int(cluster.max()) + 1
    if found != num_clusters:
        raise ClusterFileError(f"{paths} has {found} clusters, the run asks for {num_clusters}")
    write_clusters(out, vocab, {t: int(c) for t, c in zip(vocab.tokens, cluster)}, bits_of)
    missing = [t for t in vocab.tokens if t not in bits_of]
    note = (f"\nfrom {paths} (sha256 {sha256(paths)}); vocabulary words not in it, put in the last cluster: "
            f"{len(missing)} ({' '.join(missing[:10])}); words of the file not in the vocabulary: {len(unknown)} "
            f"({' '.join(unknown[:10])})\n")
    summary_path.write_text(summary(vocab, load_clusters(out, vocab), None) + note)
    print(f"[clusters] {out}: {found} clusters of {len(vocab):,} words from {paths}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Brown-cluster a prepared dataset's training vocabulary.")
    p.add_argument("--data", type=Path, help="prepared dataset directory (python -m pipeline.data.corpus)")
    p.add_argument("--num-clusters", required=True, type=int)
    p.add_argument("--alpha", type=float, default=1e-4, help="add-alpha smoothing of the bigram counts")
    p.add_argument("--paths", type=Path, help="read this wcluster paths file instead of clustering")
    p.add_argument("--authors", metavar="DATASET", help="the --paths file must be the authors' for DATASET and M")
    p.add_argument("--fetch-authors", metavar="DATASET", help="download the authors' paths file to --out")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--summary", type=Path)
    a = p.parse_args(argv)
    try:
        if a.fetch_authors:
            return fetch_authors(a.fetch_authors, a.num_clusters, a.out)
        if a.paths:
            if a.authors:
                url, expected = authors_source(a.authors, a.num_clusters)
                check_sha256(a.paths, expected, f"the authors' paths file ({url})")
            return from_paths(a.paths, a.data, a.num_clusters, a.out, a.summary)
        corpus = Corpus.load(a.data)
    except (ClusterFileError, IntegrityError) as err:
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
