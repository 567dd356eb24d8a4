"""Brown clusters: file format, every word in exactly one non-empty cluster, summary, determinism."""
import os

import numpy as np

from pipeline.data.clusters import brown_clusters, load_clusters, main
from pipeline.data.corpus import Corpus


def run(data, out, m):
    """The command line, in this process (numba compiles the clustering once per process: ~7 s)."""
    main(["--data", str(data), "--num-clusters", str(m), "--out", str(out), "--summary", str(out.with_suffix(".md"))])


def class_bigram_information(classes: np.ndarray) -> float:
    """Mutual information (nats) between the classes of adjacent tokens: what Brown clustering maximizes."""
    m = classes.max() + 1
    joint = np.bincount(classes[:-1] * m + classes[1:], minlength=m * m).reshape(m, m) / (len(classes) - 1)
    left, right = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (left @ right)[nz])).sum())


def test_cluster_file(small_ptb, tmp_path):
    vocab = Corpus.load(small_ptb).vocab
    a = tmp_path / "a.tsv"
    run(small_ptb, a, 8)
    lines = a.read_text().splitlines()
    assert lines[0] == "word\tcluster\tbits\tcount"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == list(vocab.tokens)
    assert all(set(r[2]) <= {"0", "1"} and r[2] for r in rows)
    assert [int(r[3]) for r in rows] == list(vocab.counts)
    cluster = load_clusters(a, vocab)
    assert cluster.min() == 0 and cluster.max() == 7 and (np.bincount(cluster) > 0).all()
    # a hierarchy: each cluster's words share a bit prefix that no other cluster's prefix starts (prefix-free)
    prefixes = [os.path.commonprefix([r[2] for r, c in zip(rows, cluster) if c == k]) for k in range(8)]
    assert all(a == b or not b.startswith(a) for a in prefixes for b in prefixes), prefixes
    # and a clustering: the class bigrams carry more mutual information than the same sizes assigned at random
    ids = Corpus.load(small_ptb).splits["train"].numpy()
    shuffled = np.random.default_rng(0).permutation(cluster)
    assert class_bigram_information(cluster[ids]) > 5 * class_bigram_information(shuffled[ids])
    summary = a.with_suffix(".md").read_text().splitlines()
    assert summary[0].startswith(f"# Brown clusters: 8 clusters of {len(vocab):,} words")
    table = [line for line in summary if line.startswith("| ") and line[2].isdigit()]
    assert [int(line.split("|")[2]) for line in table] == np.bincount(cluster).tolist()


def test_clustering_is_deterministic(small_ptb):
    corpus = Corpus.load(small_ptb)
    tokens = [corpus.vocab.tokens[i] for i in corpus.splits["train"][:1500].tolist()]
    first = brown_clusters(tokens, 6, 1e-4)
    assert brown_clusters(tokens, 6, 1e-4) == first
