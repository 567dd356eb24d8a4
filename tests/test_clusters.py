"""Brown clusters: file format, every word in exactly one non-empty cluster, determinism."""
import subprocess
import sys

import numpy as np

from pipeline.clusters import load_clusters
from pipeline.data import Corpus


def run(data, out, m):
    subprocess.run([sys.executable, "-m", "pipeline.clusters", "--data", str(data), "--num-clusters", str(m),
                    "--out", str(out), "--summary", str(out.with_suffix(".md"))], check=True,
                   env={"NUMBA_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, capture_output=True)


def test_cluster_file(small_ptb, tmp_path):
    vocab = Corpus.load(small_ptb).vocab
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    run(small_ptb, a, 8)
    lines = a.read_text().splitlines()
    assert lines[0] == "word\tcluster\tbits\tcount"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == list(vocab.tokens)
    assert all(set(r[2]) <= {"0", "1"} and r[2] for r in rows)
    assert [int(r[3]) for r in rows] == list(vocab.counts)
    cluster = load_clusters(a, vocab)
    assert cluster.min() == 0 and cluster.max() == 7 and (np.bincount(cluster) > 0).all()
    summary = a.with_suffix(".md").read_text()
    assert "8" in summary and "<eos>" in summary
    run(small_ptb, b, 8)
    assert a.read_text() == b.read_text()  # deterministic for a given config
