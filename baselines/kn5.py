"""Modified Kneser-Ney n-gram baseline with KenLM (``lmplz``, ``build_binary``, ``kenlm`` module).

KenLM sees the same token stream as the neural models: one sentence per line, its end
symbol ``</s>`` standing for ``<eos>``, so perplexity counts every token incl. ``<eos>``.
KenLM reserves ``<unk>``; the corpora's literal ``<unk>`` is an ordinary word here, so it is
renamed to :data:`UNK_WORD` in train, valid and test alike (deleting it would change the task).

    python -m baselines.kn5 --data data/ptb --bin-dir .tools/kenlm/bin --work build/kenlm/ptb \
        --out results/runs/ptb/kn5/metrics.json
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from hmm.data import EOS, UNK, Corpus
from hmm.provenance import CPU_NAME, provenance

UNK_WORD = "UNK_WORD"


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


def find_tool(bin_dir: Path, name: str) -> str:
    path = bin_dir / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"KenLM's {name} is neither in {bin_dir} nor on PATH; run `make setup`")
    return found


def estimate(train: Path, arpa: Path, binary: Path, bin_dir: Path, order: int, memory: str,
             discount_fallback: bool) -> None:
    cmd = [find_tool(bin_dir, "lmplz"), "-o", str(order), "-S", memory, "-T", str(arpa.parent),
           "--text", str(train), "--arpa", str(arpa)]
    if discount_fallback:
        cmd.append("--discount_fallback")
    subprocess.run(cmd, check=True)
    subprocess.run([find_tool(bin_dir, "build_binary"), str(arpa), str(binary)], check=True)


def ngram_counts(arpa: Path) -> dict[int, int]:
    counts = {}
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"ngram (\d+)=(\d+)", line)
            if m:
                counts[int(m.group(1))] = int(m.group(2))
            elif line.startswith("\\1-grams:"):
                break
    return counts


def perplexity(binary: Path, sentences: Path) -> tuple[float, int]:
    """(perplexity incl. ``</s>`` and OOVs, number of scored tokens)."""
    import kenlm

    model = kenlm.Model(str(binary))
    log10_total, tokens = 0.0, 0
    with open(sentences, encoding="utf-8") as f:
        for line in f:
            log10_total += model.score(line.rstrip("\n"), bos=True, eos=True)
            tokens += len(line.split()) + 1
    return 10.0 ** (-log10_total / tokens), tokens


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train and score a KenLM Kneser-Ney n-gram model.")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--bin-dir", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path, help="directory for the text and model files")
    p.add_argument("--out", required=True, type=Path, help="metrics.json")
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--memory", default="2G", help="lmplz -S")
    p.add_argument("--discount-fallback", action="store_true", help="lmplz --discount_fallback (tiny corpora)")
    p.add_argument("--spec", type=json.loads, default=None, help="the run's resolved spec (JSON), kept in metrics.json")
    a = p.parse_args(argv)
    corpus = Corpus.load(a.data)
    a.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    texts = {s: a.work / f"{s}.txt" for s in ("train", "valid", "test")}
    tokens = {s: write_sentences(corpus, s, path) for s, path in texts.items()}
    arpa, binary = a.work / f"kn{a.order}.arpa", a.work / f"kn{a.order}.bin"
    estimate(texts["train"], arpa, binary, a.bin_dir, a.order, a.memory, a.discount_fallback)
    counts = ngram_counts(arpa)
    metrics = {"model": f"kn{a.order}", "order": a.order, "params": sum(counts.values()),
               "params_note": "number of n-gram entries in the ARPA model", "ngram_counts": counts}
    for split in ("valid", "test"):
        ppl, n = perplexity(binary, texts[split])
        if n != tokens[split]:
            raise RuntimeError(f"{split}: KenLM scored {n} tokens, the corpus has {tokens[split]}")
        metrics[f"{split}_ppl"], metrics[f"{split}_tokens"] = ppl, n
    metrics["train_tokens"] = tokens["train"]
    metrics["wall_seconds"] = round(time.time() - start, 1)
    metrics["status"] = "measured"
    metrics["device_name"] = CPU_NAME
    metrics["provenance"] = provenance()
    metrics["spec"] = a.spec
    arpa.unlink()  # large and redundant with the binary
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[kn{a.order}] valid ppl {metrics['valid_ppl']:.2f}  test ppl {metrics['test_ppl']:.2f}  "
          f"({metrics['params']:,} n-grams, {metrics['wall_seconds']} s)")


if __name__ == "__main__":
    main()
