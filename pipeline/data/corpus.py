"""Corpora as token ids: vocabulary, prepared splits, BPTT streams (shared by every model).

One rule turns text into tokens: each physical line becomes its whitespace tokens followed
by ``<eos>``; blank lines are data (a lone ``<eos>``).  The vocabulary is the set of train
tokens, ordered by descending count, ties broken by code point.  Words of valid/test that
are not in it become ``<unk>`` (happens only on the prefixes of the tiny profile).

Prepared split on disk (``python -m pipeline.data.corpus``):  ``{split}.npy`` int32 token ids,
``{split}.docs.npy`` int64 start offsets of documents (PTB: lines, WikiText-2: articles;
training shuffles whole documents), ``vocab.tsv`` (token, train count), ``stats.json``.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline.data.fetch import DataError
from pipeline.integrity import record_dir, verify_dir

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
# what `prepare` writes (each listed with its SHA-256 in SHA256SUMS beside them)
FILES = ("vocab.tsv", "stats.json") + tuple(f"{s}{e}" for s in SPLITS for e in (".npy", ".docs.npy"))


def read_lines(path: str | Path, max_lines: int | None = None) -> list[list[str]]:
    """Token lists, one per physical line, ``<eos>`` appended; the first ``max_lines`` lines only."""
    lines = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for i, line in enumerate(f):
            if max_lines is not None and i >= max_lines:
                break
            lines.append(line.split() + [EOS])
    return lines


def document_starts(lines: list[list[str]], unit: str) -> list[int]:
    """Indices of the lines that start a document.

    ``lines``: every line is a document (PTB sentences).  ``articles``: a WikiText top-level
    heading `` = Title = `` starts one; lines before the first heading (the file's leading
    blank line) stay with the first article.
    """
    if unit == "lines":
        return list(range(len(lines)))
    if unit != "articles":
        raise ValueError(f"unknown document unit {unit!r} (lines | articles)")
    titles = [i for i, toks in enumerate(lines) if len(toks) > 1 and toks[0] == "=" and toks[1] != "="]
    return [0] + titles[1:]


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    counts: tuple[int, ...]

    @classmethod
    def build(cls, lines: list[list[str]]) -> "Vocab":
        counts = Counter(tok for line in lines for tok in line)
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(tuple(t for t, _ in order), tuple(c for _, c in order))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]
        return cls(tuple(r[0] for r in rows), tuple(int(r[1]) for r in rows))

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{t}\t{c}\n" for t, c in zip(self.tokens, self.counts))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, lines: list[list[str]]) -> tuple[np.ndarray, Counter]:
        """ids [n] int32 and a Counter of the out-of-vocabulary words mapped to ``<unk>``."""
        index = self.index
        oov = Counter(t for line in lines for t in line if t not in index)
        if oov and UNK not in index:
            raise ValueError(f"{sum(oov.values())} tokens are not in the vocabulary and it has no {UNK}")
        unk = index.get(UNK, -1)
        ids = np.fromiter((index.get(t, unk) for line in lines for t in line), dtype=np.int32)
        return ids, oov


@dataclass
class Corpus:
    """A prepared dataset: vocabulary and the token ids of each split (torch int64)."""

    vocab: Vocab
    splits: dict[str, torch.Tensor]
    docs: dict[str, torch.Tensor]
    digests: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 of what was loaded

    @classmethod
    def load(cls, directory: str | Path) -> "Corpus":
        """The prepared dataset in ``directory``, each file checked against its SHA256SUMS first."""
        d = Path(directory)
        digests = verify_dir(d, list(FILES), f"delete {d.resolve()} and run the same command again (with the same "
                                   "profile: snakemake remakes it)")
        splits = {s: torch.from_numpy(np.load(d / f"{s}.npy").astype(np.int64)) for s in SPLITS}
        docs = {s: torch.from_numpy(np.load(d / f"{s}.docs.npy")) for s in SPLITS}
        return cls(Vocab.load(d / "vocab.tsv"), splits, docs, digests)

    def ordered(self, split: str, rng: np.random.Generator | None = None) -> torch.Tensor:
        """The split's ids with its documents in file order, or shuffled by ``rng``."""
        ids = self.splits[split]
        if rng is None:
            return ids
        starts = self.docs[split].tolist()
        bounds = list(zip(starts, starts[1:] + [len(ids)]))
        return torch.cat([ids[a:b] for a, b in (bounds[i] for i in rng.permutation(len(bounds)))])


class Windows:
    """BPTT windows over one token sequence: ``batch_size`` contiguous streams cut every ``bptt``.

    The n tokens are split into B = min(batch_size, n) contiguous streams whose lengths differ by
    at most one (the first n mod B streams are one token longer), so every stream has a token.
    Shorter streams are padded at their end (masked).  Yields ``(x [B, t] int64, mask [B, t] bool)``;
    only the last window may be shorter.  Every real token appears exactly once: ``sum(mask) == n``.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int):
        n = len(ids)
        if n == 0:
            raise ValueError("no tokens to cut into windows")
        self.batch_size = B = min(batch_size, n)
        self.length = math.ceil(n / B)
        lengths = torch.full((B,), n // B, dtype=torch.long)
        lengths[: n % B] += 1
        self.mask = torch.arange(self.length)[None, :] < lengths[:, None]        # [B, L]
        self.x = ids.new_zeros(B, self.length)
        self.x[self.mask] = ids                                                 # row-major: streams in order
        self.bptt = bptt
        self.num_tokens = n

    def __len__(self) -> int:
        return math.ceil(self.length / self.bptt)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.window(w) for w in range(len(self)))

    def window(self, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        cols = slice(w * self.bptt, min((w + 1) * self.bptt, self.length))
        return self.x[:, cols], self.mask[:, cols]


def prepare(raw: dict[str, Path], out: Path, documents: str, max_lines: dict[str, int | None]) -> dict:
    """Build vocabulary and token files for one dataset (``out``: data/<dataset>) and their SHA256SUMS;
    returns the stats written to stats.json.  A split without a token is refused, naming it."""
    out.mkdir(parents=True, exist_ok=True)
    lines = {s: read_lines(raw[s], max_lines.get(s)) for s in SPLITS}
    for split in SPLITS:
        if not any(lines[split]):
            raise DataError(f"the {split} split of {out.name} ({raw[split]}) has no tokens: check the file "
                            f"(and its checksum in the config)")
    vocab = Vocab.build(lines["train"])
    vocab.save(out / "vocab.tsv")
    stats: dict = {"vocab_size": len(vocab), "documents": documents, "max_lines": max_lines, "splits": {}}
    for split in SPLITS:
        ids, oov = vocab.encode(lines[split])
        starts = document_starts(lines[split], documents)
        line_offsets = np.cumsum([0] + [len(t) for t in lines[split]])
        np.save(out / f"{split}.npy", ids)
        np.save(out / f"{split}.docs.npy", line_offsets[starts].astype(np.int64))
        stats["splits"][split] = {
            "lines": len(lines[split]),
            "tokens": int(len(ids)),
            "words": int(len(ids) - len(lines[split])),
            "documents": len(starts),
            "oov_tokens": int(sum(oov.values())),
            "oov_types": len(oov),
        }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    record_dir(out, list(FILES))
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Tokenize a dataset's three splits and build its vocabulary.")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--valid", required=True, type=Path)
    p.add_argument("--test", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--documents", choices=["lines", "articles"], required=True)
    p.add_argument("--max-lines", type=json.loads, default={}, help='JSON, e.g. {"train": 1000}')
    a = p.parse_args(argv)
    stats = prepare({"train": a.train, "valid": a.valid, "test": a.test}, a.out, a.documents, a.max_lines or {})
    sizes = " / ".join(f"{stats['splits'][s]['tokens']:,}" for s in SPLITS)
    print(f"[data] {a.out}: vocab {stats['vocab_size']:,}; tokens incl. <eos> (train/valid/test) {sizes}")


if __name__ == "__main__":
    main()
