"""Benchmarks: the TVM scan kernels against PyTorch (bench.kernels) and the cost of the VLNHMM's
training step and evaluation batch against |Z| (bench.scale), each writing CSV and PNG."""
from __future__ import annotations

from pathlib import Path


def save_plot(draw, csv: Path, png: Path) -> None:
    """``draw()`` writes ``png`` from the rows of ``csv``; a node without matplotlib or pandas keeps the CSV
    alone (it is the record) and says so."""
    try:
        draw()
    except ImportError as err:
        print(f"wrote {csv} (no plot: {err})")
        return
    print(f"wrote {csv} and {png}")
