"""Shared fixtures: the real data from the local mirror (../shared/data), fetched and prepared once."""
from pathlib import Path

import pytest
import yaml

from hmm.data import prepare
from hmm.fetch import fetch

ROOT = Path(__file__).resolve().parent.parent
MIRROR = (ROOT / "../shared/data").resolve()
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> Path:
    """Both datasets' raw files, copied from the mirror and checked against the pinned SHA-256."""
    if not MIRROR.is_dir():
        pytest.fail(f"the data mirror {MIRROR} is missing (tests expect ../shared/data beside the repository)")
    out = tmp_path_factory.mktemp("raw")
    for spec in CONFIG["datasets"].values():
        fetch(spec, out, MIRROR)
    return out


def raw_paths(raw: Path, dataset: str) -> dict:
    return {s: raw / v["file"] for s, v in CONFIG["datasets"][dataset]["splits"].items()}


@pytest.fixture(scope="session")
def small_ptb(raw, tmp_path_factory) -> Path:
    """The first 300 / 50 / 50 lines of PTB, prepared."""
    out = tmp_path_factory.mktemp("small_ptb")
    prepare(raw_paths(raw, "ptb"), out, "lines", {"train": 300, "valid": 50, "test": 50})
    return out
