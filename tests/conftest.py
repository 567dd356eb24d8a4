"""Shared fixtures: real data, fetched through the pipeline's own checksummed path.

``tiny_raw`` / ``small_ptb``: the prefixes kept in the repository (.test/data), so most tests run
on a fresh clone with nothing beside it.  ``raw``: the full corpora from the local mirror
../shared/data; tests that need them are skipped, with the reason, where it is absent.
"""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.data.corpus import prepare
from pipeline.data.fetch import fetch

ROOT = Path(__file__).resolve().parent.parent
MIRROR = (ROOT / "../shared/data").resolve()
TEST_DATA = ROOT / ".test/data"
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())
TINY = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())


def merged_config(*files: str) -> dict:
    """Config files merged as Snakemake merges them: mappings key by key, anything else replaced."""
    def merge(base, over):
        if isinstance(base, dict) and isinstance(over, dict):
            return {k: merge(base[k], v) if k in base else v for k, v in over.items()} | \
                {k: v for k, v in base.items() if k not in over}
        return over
    config: dict = {}
    for f in files:
        config = merge(config, yaml.safe_load((ROOT / f).read_text()))
    return config


def dataset_spec(dataset: str, tiny: bool) -> dict:
    """The dataset's config entry (tiny: with the in-repository prefixes' checksums)."""
    spec = dict(CONFIG["datasets"][dataset])
    if tiny:
        spec["splits"] = TINY["datasets"][dataset]["splits"]
    return spec


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> Path:
    """Both full datasets' raw files, copied from the mirror and checked against the pinned SHA-256."""
    if not MIRROR.is_dir():
        pytest.skip(f"the full-data mirror {MIRROR} is absent (put the PTB / WikiText-2 files there)")
    out = tmp_path_factory.mktemp("raw")
    for name in CONFIG["datasets"]:
        fetch(dataset_spec(name, tiny=False), out, MIRROR)
    return out


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """The in-repository prefixes of both datasets, fetched and checked like the full data."""
    out = tmp_path_factory.mktemp("tiny_raw")
    for name in CONFIG["datasets"]:
        fetch(dataset_spec(name, tiny=True), out, TEST_DATA)
    return out


def raw_paths(raw: Path, dataset: str) -> dict:
    return {s: raw / v["file"] for s, v in CONFIG["datasets"][dataset]["splits"].items()}


@pytest.fixture(scope="session")
def small_ptb(tiny_raw, tmp_path_factory) -> Path:
    """The first 300 / 50 / 50 lines of PTB, prepared."""
    out = tmp_path_factory.mktemp("small_ptb")
    prepare(raw_paths(tiny_raw, "ptb"), out, "lines", {"train": 300, "valid": 50, "test": 50})
    return out


_TINY_CHECKED: list[bool] = []


def tiny_retrain_args() -> list[str]:
    """``--forcerun train`` for the first tiny build of a test session where tiny/ holds runs trained by other
    code than this checkout's (a train job's inputs are its data and settings, not the code, so snakemake
    would keep them and the tests would judge the old code's numbers); a dirty checkout's code cannot be told
    apart, so its runs are trained again once.  A fresh clone (CI) has no runs there: nothing is forced."""
    from pipeline.provenance import commit
    from pipeline.reporting.runs import trained_commit

    if _TINY_CHECKED:
        return []
    _TINY_CHECKED.append(True)
    now = commit()[0]
    found = [json.loads(m.read_text()) for m in (ROOT / "tiny/results/runs").glob("*/*/metrics.json")]
    other = now.endswith("-dirty") or now == "unknown" or any(trained_commit(m) != now for m in found)
    if not (found and other):
        return []
    # their checkpoints too: a forced job would resume a finished run at its last step and score the old weights
    shutil.rmtree(ROOT / "tiny/build/checkpoints", ignore_errors=True)
    return ["--forcerun", "train"]
