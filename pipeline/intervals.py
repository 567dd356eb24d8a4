"""How sure is a perplexity: per-document scores, a bootstrap interval over documents, seed repeats.

Test-set noise.  Every evaluation writes, per document of the split (a PTB line, a WikiText-2
article), the log-likelihood (natural log) and the number of tokens it scores, ``<eos>`` included:
the same tokens the perplexity counts, so ``exp(-sum logp / sum tokens)`` over the documents is
the reported perplexity.  The interval resamples whole documents with replacement
(:data:`RESAMPLES` times, generator seeded with :data:`SEED`) and takes the 2.5 and 97.5
percentiles of the resampled perplexities (a 95 % percentile bootstrap).

Training noise.  A run repeated over seeds gives n perplexities: their mean, standard deviation
(n - 1 in the denominator) and n.  The row's interval is centred on the mean; each side is the
bootstrap half-width (the mean over the seeds of that side) widened by the seed spread:
``sqrt(half**2 + (1.96 sd)**2)``; with n = 1 it is the bootstrap interval itself.

Verdict: the paper agrees with a row when its number lies inside the row's interval; otherwise
the row differs by :func:`beyond_pct`: the distance from the paper's number to the nearer end of
the interval, in % of the paper's number (positive: ours higher).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

RESAMPLES = 1000
SEED = 27
LEVEL = 0.95
Z95 = 1.959964  # the normal quantile that goes with a 95 % range of the seed spread
METHOD = (f"95 % percentile bootstrap over documents (PTB: sentences, WikiText-2: articles), {RESAMPLES:,} "
          f"resamples, generator seed {SEED}; with n > 1 seeds centred on the mean and each side widened by the "
          f"seed spread: sqrt(half-width^2 + (1.96 sd)^2)")
DOCS_FILE = "docs.npz"


def document_sums(token_logp: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood [D] float64, tokens [D] int64) of each document; ``starts``: document start offsets."""
    token_logp = np.asarray(token_logp, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= len(token_logp):
        raise ValueError("document starts must begin at 0, rise strictly and lie inside the split")
    return np.add.reduceat(token_logp, starts), np.diff(np.append(starts, len(token_logp)))


def perplexity(logp: np.ndarray, tokens: np.ndarray) -> float:
    """exp(-sum logp / sum tokens) over documents (inf where that overflows)."""
    nll = -float(np.sum(logp)) / float(np.sum(tokens))
    return math.exp(nll) if nll < 709.0 else math.inf


def bootstrap(logp: np.ndarray, tokens: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval of the perplexity, resampling documents with replacement."""
    logp, tokens = np.asarray(logp, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    rng = np.random.default_rng(seed)
    D = len(logp)
    draws = rng.integers(0, D, size=(resamples, D))
    ppl = np.exp(-logp[draws].sum(axis=1) / tokens[draws].sum(axis=1))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(ppl, [tail, 100 - tail])
    return float(lo), float(hi)


def save_documents(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    """``{split}_logp`` (float64) and ``{split}_tokens`` (int32) per split, compressed; returns the bytes written."""
    arrays = {}
    for split, (logp, tokens) in splits.items():
        arrays[f"{split}_logp"] = np.asarray(logp, dtype=np.float64)
        arrays[f"{split}_tokens"] = np.asarray(tokens, dtype=np.int32)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path.stat().st_size


def load_documents(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as z:
        return {k.removesuffix("_logp"): (z[k], z[k.replace("_logp", "_tokens")]) for k in z.files
                if k.endswith("_logp")}


def split_metrics(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """metrics.json entries: ``{split}_ppl_interval`` [lo, hi] and how they were made."""
    out: dict = {}
    for split, (logp, tokens) in splits.items():
        out[f"{split}_ppl_interval"] = [round(v, 4) for v in bootstrap(logp, tokens)]
    out["interval"] = {"method": METHOD, "resamples": RESAMPLES, "seed": SEED, "level": LEVEL,
                       "documents": {split: len(logp) for split, (logp, _) in splits.items()}}
    return out


def combine(ppls: list[float], intervals: list[list[float] | None]) -> dict:
    """One row from n seeds: mean, sd (None for n = 1), n, and the interval [lo, hi] (None without a bootstrap).

    ``intervals[i]`` is seed i's bootstrap interval (or None); the half-widths are averaged over the
    seeds that have one and widened by the seed spread (module docstring)."""
    n = len(ppls)
    if n == 0:
        return {"ppl": None, "sd": None, "n": 0, "lo": None, "hi": None}
    mean = statistics.fmean(ppls)
    sd = statistics.stdev(ppls) if n > 1 else None
    have = [(p, iv) for p, iv in zip(ppls, intervals) if iv]
    lo = hi = None
    if have:
        below = statistics.fmean(p - iv[0] for p, iv in have)
        above = statistics.fmean(iv[1] - p for p, iv in have)
        spread = Z95 * (sd or 0.0)
        lo, hi = mean - math.hypot(below, spread), mean + math.hypot(above, spread)
    return {"ppl": mean, "sd": sd, "n": n, "lo": lo, "hi": hi}


def beyond_pct(paper: float | None, lo: float | None, hi: float | None) -> float | None:
    """0 where ``paper`` lies in [lo, hi]; else how far outside, in % of ``paper`` (positive: ours higher)."""
    if paper is None or lo is None or hi is None or not paper:
        return None
    if lo <= paper <= hi:
        return 0.0
    return 100.0 * ((lo - paper) if paper < lo else (hi - paper)) / paper
