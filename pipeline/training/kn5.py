"""The KenLM Kneser-Ney 5-gram run of Table 1: write the corpora as KenLM text, estimate, score.

KenLM sees the same token stream as the neural models: one sentence per line, its end symbol
``</s>`` standing for ``<eos>``, so perplexity counts every token including ``<eos>``; the
corpora's literal ``<unk>`` is renamed to :data:`baselines.kn5.UNK_WORD` (KenLM reserves ``<unk>``).
Each line's score (with ``bos`` and ``eos``) is summed per document into ``docs.npz`` beside
metrics.json, with each perplexity's bootstrap interval (:mod:`pipeline.intervals`).

    python -m pipeline.training.kn5 --spec '{"name": "kn5", "dataset": "ptb", "model": "kn5", ...}' --data data/ptb \
        --bin-dir .tools/kenlm/bin --work build/kenlm/ptb --out results/runs/ptb/kn5/metrics.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from baselines.kn5 import UNK_WORD, estimate, ngram_counts, sentence_scores
from pipeline import intervals
from pipeline.config import Run
from pipeline.data.corpus import EOS, UNK, Corpus
from pipeline.integrity import IntegrityError, record_dir
from pipeline.provenance import CPU_NAME, provenance


def write_sentences(corpus: Corpus, split: str, path: Path) -> int:
    """Write a split as KenLM input (``<eos>`` ends a line, ``<unk>`` renamed); returns #tokens."""
    words = list(corpus.vocab.tokens)
    if UNK_WORD in corpus.vocab.index:
        raise ValueError(f"the vocabulary already contains {UNK_WORD}")
    words[corpus.vocab.index[UNK]] = UNK_WORD
    eos = corpus.vocab.index[EOS]
    ids = corpus.splits[split].tolist()
    if ids and ids[-1] != eos:
        raise ValueError(f"{split} does not end with {EOS}")
    with open(path, "w", encoding="utf-8") as f:
        line: list[str] = []
        for i in ids:
            if i == eos:
                f.write(" ".join(line) + "\n")
                line = []
            else:
                line.append(words[i])
    return len(ids)


def document_scores(scores: list[float], line_tokens: list[int], doc_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(natural-log likelihood, tokens) per document from KenLM's log10 score of each line; ``doc_starts``:
    the documents' first token offsets (each a line start: a PTB line, a WikiText-2 article's first line)."""
    line_starts = np.concatenate([[0], np.cumsum(line_tokens)[:-1]])
    first_line = np.searchsorted(line_starts, doc_starts)
    if not np.array_equal(line_starts[np.minimum(first_line, len(line_starts) - 1)], doc_starts):
        raise ValueError("a document does not start at a line start")
    return (np.add.reduceat(np.asarray(scores) * math.log(10), first_line),
            np.add.reduceat(np.asarray(line_tokens), first_line))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train and score a KenLM Kneser-Ney n-gram model.")
    p.add_argument("--spec", required=True, help="the run's resolved spec (JSON text), kept in metrics.json")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--bin-dir", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path, help="directory for the text and model files")
    p.add_argument("--out", required=True, type=Path, help="metrics.json")
    p.add_argument("--memory", default="2G", help="lmplz -S")
    p.add_argument("--discount-fallback", action="store_true", help="lmplz --discount_fallback (tiny corpora)")
    a = p.parse_args(argv)
    run = Run.from_dict(json.loads(a.spec))
    order = run.settings.order
    try:
        corpus = Corpus.load(a.data)
    except IntegrityError as err:
        raise SystemExit(f"error: {err}") from None
    a.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    texts = {s: a.work / f"{s}.txt" for s in ("train", "valid", "test")}
    tokens = {s: write_sentences(corpus, s, path) for s, path in texts.items()}
    arpa, binary = a.work / f"kn{order}.arpa", a.work / f"kn{order}.bin"
    estimate(texts["train"], arpa, binary, a.bin_dir, order, a.memory, a.discount_fallback)
    counts = ngram_counts(arpa)
    metrics = {"run": run.key, "model": run.model, "order": order, "params": sum(counts.values()),
               "params_note": "number of n-gram entries in the ARPA model", "ngram_counts": counts}
    docs, docs_seconds = {}, 0.0
    for split in ("valid", "test"):
        scores, line_tokens = sentence_scores(binary, texts[split])
        n = sum(line_tokens)
        if n != tokens[split]:
            raise RuntimeError(f"{split}: KenLM scored {n} tokens, the corpus has {tokens[split]}")
        metrics[f"{split}_ppl"], metrics[f"{split}_tokens"] = 10.0 ** (-sum(scores) / n), n
        t0 = time.perf_counter()
        docs[split] = document_scores(scores, line_tokens, corpus.docs[split].numpy())
        docs_seconds += time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    metrics.update(intervals.split_metrics(docs))
    metrics["interval"]["bytes"] = intervals.save_documents(a.out.parent / intervals.DOCS_FILE, docs)
    metrics["interval"]["seconds"] = round(docs_seconds + time.perf_counter() - t0, 3)
    metrics["train_tokens"] = tokens["train"]
    metrics["wall_seconds"] = round(time.time() - start, 1)
    metrics["status"] = "measured"
    metrics["device_name"] = CPU_NAME
    metrics["provenance"] = provenance()
    metrics["spec"] = run.result_spec()
    metrics["inputs"] = {"data": corpus.digests}
    arpa.unlink()  # large and redundant with the binary
    a.out.write_text(json.dumps(metrics, indent=2) + "\n")
    record_dir(a.out.parent, [a.out.name, intervals.DOCS_FILE])  # the tables check these
    lo, hi = metrics["test_ppl_interval"]
    print(f"[{run.key}] valid ppl {metrics['valid_ppl']:.2f}  test ppl {metrics['test_ppl']:.2f} [{lo:.2f}, {hi:.2f}]  "
          f"({metrics['params']:,} n-grams, {metrics['wall_seconds']} s)")


if __name__ == "__main__":
    main()
