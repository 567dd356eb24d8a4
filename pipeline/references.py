"""The committed reference runs (results/reference/, filed by ``./repro import``): what is filed for a run.

A reference counts for a run only where it was trained from today's settings (execution settings aside:
:func:`pipeline.config.stale_reason`); a measured one of today's settings is not replaced by a cut-short
run without ``--force``.  The importer, ``./repro status`` and the node bundle's plan all ask here.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Run, stale_reason
from pipeline.files import read_json

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results/reference"


def filing_roots(config: dict, workdir: Path) -> tuple[Path, Path]:
    """Where runs are filed (and read as references) and where benchmark CSVs go: the committed
    results/reference/ and results/bench/ of the repository for the paper's sizes (every profile but tiny),
    the working directory's results/reference/ and results/bench/ under the tiny profile, whose small runs
    must never replace the committed ones (and whose own tables read them from there)."""
    if config.get("profile") == "tiny":
        return workdir / "results/reference", workdir / "results/bench"
    return REFERENCE, ROOT / "results/bench"


def filed_reference(run: Run, reference: Path = REFERENCE) -> dict | None:
    """The metrics of ``run``'s committed reference where its settings are today's; else None (none filed, an
    unreadable metrics.json, or one trained from other settings)."""
    metrics = read_json(reference / run.filed_as / "metrics.json")
    if not isinstance(metrics, dict) or stale_reason(metrics.get("spec"), run.result_spec()) is not None:
        return None
    return metrics


def measured_reference(run: Run, reference: Path = REFERENCE) -> dict | None:
    """:func:`filed_reference` where it ran to its end (status ``measured``); else None."""
    metrics = filed_reference(run, reference)
    return metrics if metrics is not None and metrics.get("status") == "measured" else None


def keeps_reference(run: Run, status: str, reference: Path = REFERENCE) -> str | None:
    """Why a new result of ``status`` must not replace ``run``'s filed reference (None: it may): a measured
    reference of today's settings stays over anything not measured (``--force`` replaces it)."""
    old = measured_reference(run, reference)
    if old is None or status == "measured":
        return None
    return (f"{run.key}: kept the measured reference of {(old.get('provenance') or {}).get('date')}; this run is "
            f"'{status}' (--force replaces it)")
