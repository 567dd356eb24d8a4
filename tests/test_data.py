"""Data: checksums, token counts and vocabularies of the full datasets, streams, corrupt files."""
import json
import lzma
import shutil

import numpy as np
import torch
import pytest

from conftest import TEST_DATA, dataset_spec, raw_paths
from pipeline.data.corpus import Corpus, Vocab, Windows, prepare
from pipeline.data.fetch import DataError, fetch

EXPECTED = {  # tokens incl. <eos> (train, valid, test), vocabulary, documents
    "ptb": ((929_589, 73_760, 82_430), 10_000, "lines"),
    "wt2": ((2_088_628, 217_646, 245_569), 33_278, "articles"),
}


@pytest.mark.parametrize("dataset", ["ptb", "wt2"])
def test_full_counts(raw, tmp_path, dataset):
    tokens, vocab_size, documents = EXPECTED[dataset]
    stats = prepare(raw_paths(raw, dataset), tmp_path, documents, {})
    assert stats["vocab_size"] == vocab_size
    assert tuple(stats["splits"][s]["tokens"] for s in ("train", "valid", "test")) == tokens
    assert stats["splits"]["train"]["oov_tokens"] == 0
    corpus = Corpus.load(tmp_path)
    vocab = corpus.vocab
    assert "<eos>" in vocab.index and "<unk>" in vocab.index
    eos = vocab.index["<eos>"]
    assert int((corpus.splits["valid"] == eos).sum()) == stats["splits"]["valid"]["lines"]
    assert Vocab.load(tmp_path / "vocab.tsv").tokens == vocab.tokens
    if dataset == "wt2":
        assert [stats["splits"][s]["documents"] for s in ("train", "valid", "test")] == [629, 60, 64]


def test_windows_cover_every_token_once(small_ptb):
    ids = Corpus.load(small_ptb).splits["valid"]
    w = Windows(ids, batch_size=16, bptt=32)
    windows = list(w)
    assert int(sum(m.sum() for _, m in windows)) == len(ids)
    # the windows side by side are the streams, and the streams one after the other are the split, in order
    assert torch.equal(torch.cat([x for x, _ in windows], 1), w.x) and torch.equal(torch.cat([m for _, m in windows], 1), w.mask)
    assert np.array_equal(w.x[w.mask].numpy(), ids.numpy())


def test_shuffle_keeps_documents(small_ptb):
    corpus = Corpus.load(small_ptb)
    shuffled = corpus.ordered("train", np.random.default_rng(0))
    assert sorted(shuffled.tolist()) == sorted(corpus.splits["train"].tolist())
    assert not np.array_equal(shuffled.numpy(), corpus.splits["train"].numpy())
    eos = corpus.vocab.index["<eos>"]

    def sentences(ids) -> list[tuple]:
        cuts = np.flatnonzero(ids.numpy() == eos) + 1
        return sorted(tuple(s) for s in np.split(ids.numpy(), cuts) if len(s))
    assert int(shuffled[-1]) == eos and sentences(shuffled) == sentences(corpus.splits["train"])  # whole sentences move


def _corrupt_mirror(tmp_path, change):
    """A copy of the in-repository mirror with one file changed."""
    mirror = tmp_path / "mirror"
    shutil.copytree(TEST_DATA, mirror)
    return mirror, change(mirror)


def test_one_changed_byte_is_refused(tmp_path):
    def flip(mirror):
        packed = mirror / "ptb/ptb.valid.txt.xz"
        data = bytearray(lzma.decompress(packed.read_bytes()))
        data[1000] ^= 0x01  # one bit of one byte
        packed.unlink()
        (mirror / "ptb/ptb.valid.txt").write_bytes(bytes(data))  # the mirror takes plain files too
    mirror, _ = _corrupt_mirror(tmp_path, flip)
    out = tmp_path / "raw"
    spec = dataset_spec("ptb", tiny=True)
    with pytest.raises(DataError) as err:
        fetch(spec, out, mirror)
    msg = str(err.value)
    expected = spec["splits"]["valid"]["sha256"]
    assert "ptb.valid.txt" in msg and f"expected sha256 {expected}" in msg and "actual   sha256" in msg
    assert not (out / "ptb/ptb.valid.txt").exists() and not list(out.rglob("*.part"))


def test_truncated_xz_is_refused(tmp_path):
    def cut(mirror):
        packed = mirror / "ptb/ptb.test.txt.xz"
        packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    mirror, _ = _corrupt_mirror(tmp_path, cut)
    out = tmp_path / "raw"
    with pytest.raises(DataError, match="truncated"):
        fetch(dataset_spec("ptb", tiny=True), out, mirror)
    assert not (out / "ptb/ptb.test.txt").exists() and not list(out.rglob("*.part"))


def test_stats_json_is_written(small_ptb):
    stats = json.loads((small_ptb / "stats.json").read_text())
    assert stats["splits"]["train"]["lines"] == 300
