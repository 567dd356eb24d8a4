"""KN 5-gram: our perplexity (kenlm module, every token incl. </s>) equals KenLM's own `query`."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import resolve_run

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".tools/kenlm/bin"


@pytest.fixture(scope="module")
def kn5(small_ptb, tmp_path_factory):
    if not (BIN / "lmplz").exists():
        pytest.skip(f"KenLM binaries missing in {BIN}: run ./repro setup")
    work = tmp_path_factory.mktemp("kn5")
    spec = resolve_run({"name": "kn5", "dataset": "ptb", "model": "kn5"}).result_spec()
    subprocess.run([sys.executable, "-m", "pipeline.training.kn5", "--spec", json.dumps(spec), "--data", str(small_ptb),
                    "--bin-dir", str(BIN), "--work", str(work), "--out", str(work / "metrics.json"),
                    "--discount-fallback"], check=True)
    return work, json.loads((work / "metrics.json").read_text())


@pytest.mark.parametrize("split", ["valid", "test"])
def test_matches_query(kn5, split):
    work, metrics = kn5
    out = subprocess.run([str(BIN / "query"), "-v", "summary", str(work / "kn5.bin")],
                         stdin=open(work / f"{split}.txt"), capture_output=True, text=True, check=True).stdout
    ppl = float(re.search(r"Perplexity including OOVs:\s*([\d.]+)", out).group(1))
    assert metrics[f"{split}_ppl"] == pytest.approx(ppl, rel=1e-4)
    assert metrics["status"] == "measured" and metrics["params"] > 0


def test_unk_is_a_word(kn5):
    work, metrics = kn5
    text = (work / "valid.txt").read_text()
    assert "<unk>" not in text and "UNK_WORD" in text  # KenLM reserves <unk>; ours is an ordinary token
    assert metrics["valid_tokens"] == len(text.split()) + text.count("\n")


def test_params_are_the_arpa_models_ngram_entries(kn5, tmp_path):
    """params: the n-gram entries of the model, counted here line by line in the ARPA file lmplz writes for the
    same text (not from its header, which is what the pipeline reads)."""
    from baselines.kn5 import estimate

    work, metrics = kn5
    assert (work / "train.txt").is_file(), sorted(p.name for p in work.iterdir())
    arpa = tmp_path / "kn5.arpa"
    estimate(work / "train.txt", arpa, tmp_path / "kn5.bin", BIN, 5, "10%", True)
    entries, section = {}, None
    for line in arpa.read_text(encoding="utf-8").splitlines():
        if m := re.fullmatch(r"\\(\d)-grams:", line):
            section = m.group(1)
        elif not line.strip() or line.startswith("\\"):
            section = None
        elif section:
            entries[section] = entries.get(section, 0) + 1
    assert sorted(entries) == ["1", "2", "3", "4", "5"]
    assert {str(k): v for k, v in metrics["ngram_counts"].items()} == entries
    assert metrics["params"] == sum(entries.values())
