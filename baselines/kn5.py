"""Modified Kneser-Ney n-gram baseline with KenLM (``lmplz``, ``build_binary``, ``kenlm`` module).

Works on text files, one sentence per line: ``estimate`` builds the model from a training text,
``perplexity`` scores a text counting one ``</s>`` per line, so with ``<eos>`` written as line
ends the perplexity counts every token including ``<eos>`` (see :mod:`pipeline.training.kn5` for how the
corpora are written).  KenLM reserves ``<unk>``: a corpus's literal ``<unk>`` must be renamed to
an ordinary word (:data:`UNK_WORD`) in train, valid and test alike (deleting it would change the task).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

UNK_WORD = "UNK_WORD"


def find_tool(bin_dir: Path, name: str) -> str:
    path = bin_dir / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"KenLM's {name} is neither in {bin_dir} nor on PATH; run `./repro setup`")
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


def sentence_scores(binary: Path, sentences: Path) -> tuple[list[float], list[int]]:
    """(log10 p of each line incl. its ``</s>`` and OOVs, tokens scored on each line: words + 1)."""
    import kenlm

    model = kenlm.Model(str(binary))
    scores, tokens = [], []
    with open(sentences, encoding="utf-8") as f:
        for line in f:
            scores.append(model.score(line.rstrip("\n"), bos=True, eos=True))
            tokens.append(len(line.split()) + 1)
    return scores, tokens


def perplexity(binary: Path, sentences: Path) -> tuple[float, int]:
    """(perplexity incl. ``</s>`` and OOVs, number of scored tokens)."""
    scores, tokens = sentence_scores(binary, sentences)
    return 10.0 ** (-sum(scores) / sum(tokens)), sum(tokens)
