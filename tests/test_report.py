"""pipeline.report: paper tables / figures from run specs + metrics (fast, no training).

Runs laid out in tmp_path: ptb/kn5 measured, ptb/vlnhmm-16384 cut short, ptb/vlnhmm-32768 not
run (reason given), ptb/vlnhmm-16384-factored only in a reference directory, wt2/lstm not run
(no reason: default).  The CLI renders every table and figure with the real config/paper.yaml.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.report import build_figure, build_table, main

ROOT = Path(__file__).resolve().parents[1]
PAPER_YAML = ROOT / "config" / "paper.yaml"
PAPER = yaml.safe_load(PAPER_YAML.read_text())
NOT_RUN = {"ptb/vlnhmm-32768": "not run: no GPU on this machine (gpu_runs: auto)"}
PROV = {"commit": "0123456789abcdef0123", "date": "2025-11-20", "host": "gpu-box"}


def _metrics(status, valid, test=None, train=None, params=1000, ms=None, device="cpu"):
    return {"params": params, "train_ppl": train, "valid_ppl": valid, "test_ppl": test, "status": status,
            "eval_ms_per_batch": ms, "device_name": device, "wall_seconds": 1.0, "provenance": PROV}


def _settings(num_states, num_clusters=128, state_repr="independent"):
    return {"num_states": num_states, "num_clusters": num_clusters, "state_repr": state_repr, "neural": True,
            "state_dropout": 0.5, "constraint": "brown"}


RUNS = {  # key -> (model, rows, settings, local metrics, reference metrics)
    "ptb/kn5": ("kn5", ["table1/kn5"], {"order": 5}, _metrics("measured", 150.123, 141.456, params=2_100_000), None),
    "ptb/vlnhmm-16384": (
        "vlnhmm", ["table2/vlnhmm", "table4/vlnhmm", "table3/brown-16384-m128-a", "table3/brown-16384-m128-b",
                   "fig3", "fig4"],
        _settings(16384), _metrics("cut short: max_steps 300 (0.4 of 50 epochs)", 140.5, 139.0, train=120.25,
                                   params=7_200_000, ms=12.346), None),
    "ptb/vlnhmm-32768": ("vlnhmm", ["table1/vlnhmm", "fig3"], _settings(32768), None, None),
    "ptb/vlnhmm-16384-factored": (
        "vlnhmm", ["table4/factored", "fig4"], _settings(16384, state_repr="factored"), None,
        _metrics("measured", 137.5, train=121.0, params=5_600_000, ms=30.0, device="NVIDIA H100 80GB HBM3")),
    "wt2/lstm": ("lstm", ["table1/lstm"], {"layers": 2}, None, None),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    specs = []
    for key, (model, rows, settings, local, ref) in RUNS.items():
        dataset, name = key.split("/")
        d = tmp / "runs" / key
        d.mkdir(parents=True)
        spec = {"name": name, "dataset": dataset, "model": model, "rows": rows, "settings": settings,
                "train": None if model == "kn5" else {"seed": 1111}}
        specs.append(spec)
        trained = {k: v for k, v in spec.items() if k != "rows"}  # what a run records in its metrics
        if local:
            (d / "metrics.json").write_text(json.dumps(local | {"spec": trained}))
        if ref:
            (tmp / "reference" / key).mkdir(parents=True)
            (tmp / "reference" / key / "metrics.json").write_text(json.dumps(ref | {"spec": trained}))
    out = {}
    for name in ["table1", "table2", "table3", "table4", "fig3", "fig4"]:
        kind = "table" if name.startswith("table") else "figure"
        csv, png = tmp / f"{name}.csv", tmp / f"{name}.png"
        main([kind, "--name", name, "--paper", str(PAPER_YAML), "--runs", json.dumps(specs),
              "--runs-dir", str(tmp / "runs"), "--reference", str(tmp / "reference"), "--not-run", json.dumps(NOT_RUN), "--profile", "tiny",
              "--csv", str(csv), "--png", str(png)])
        # keep_default_na=False: "None" is a table 3 constraint, not a missing value
        out[name] = (pd.read_csv(csv, keep_default_na=False, na_values=[""]), png)
    return out


def _paper_rows(name):
    rows = PAPER[name]["rows"]
    return [(ds, r) for ds, rs in rows.items() for r in rs] if isinstance(rows, dict) else [(None, r) for r in rows]


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "table4", "fig3", "fig4"])
def test_png_written(rendered, name):
    png = rendered[name][1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "table4"])
def test_every_paper_row_in_order(rendered, name):
    df = rendered[name][0]
    rows = _paper_rows(name)
    assert len(df) == len(rows)
    label = "constraint" if name == "table3" else "model"
    assert list(df[label]) == [r[label] for _, r in rows]
    for (_, r), (_, got) in zip(rows, df.iterrows()):
        for col in ["valid", "test", "train", "ms_per_batch"]:
            if f"paper_{col}_ppl" in df or f"paper_{col}" in df:
                paper_col = f"paper_{col}" if col == "ms_per_batch" else f"paper_{col}_ppl"
                want = r.get(col)
                assert (math.isnan(got[paper_col]) if want is None else got[paper_col] == want), (r, col)
        if r.get("cited"):
            assert got["status"] == f"cited: {r['cited']}" and pd.isna(got["run"]) and pd.isna(got["valid_ppl"])
    measured = df[df.status.str.startswith(("measured", "cut short", "reference"))]
    for c in [c for c in df if c.endswith("_diff")]:  # diff = ours - paper, NaN unless both exist
        ours, paper = df[c.replace("_diff", "_ppl")], df["paper_" + c.replace("_diff", "_ppl")]
        assert ((df[c] - (ours - paper)).abs().fillna(0) < 1e-9).all()
        assert df[c].notna().sum() <= len(measured)
    unfilled = df[df.status.str.startswith(("not run", "cited"))]
    assert unfilled[[c for c in df if c.endswith("_ppl") and not c.startswith("paper_")]].isna().all().all()


def test_table1_values(rendered):
    df = rendered["table1"][0].set_index(["dataset", "model"])
    kn5 = df.loc[("ptb", "KN 5-gram")]
    assert kn5.status == "measured" and kn5.run == "ptb/kn5" and kn5.params == 2_100_000
    assert kn5.valid_ppl == 150.12 and math.isnan(kn5.valid_diff)  # the paper reports no KN valid on PTB
    assert kn5.test_ppl == 141.46 and kn5.test_diff == pytest.approx(0.26)
    assert kn5.paper_params == "2M"
    vl = df.loc[("ptb", "VLNHMM |Z| = 2^15")]
    assert vl.status == NOT_RUN["ptb/vlnhmm-32768"] and vl.run == "ptb/vlnhmm-32768"
    assert math.isnan(vl.valid_ppl) and math.isnan(vl.params) and vl.paper_valid_ppl == 125.0
    lstm = df.loc[("wt2", "2x256 LSTM")]
    assert lstm.status == "not run" and math.isnan(lstm.test_ppl)
    wt2_kn5 = df.loc[("wt2", "KN 5-gram")]  # the ptb kn5 run must not fill the wt2 row
    assert wt2_kn5.status == "not run" and pd.isna(wt2_kn5.run)
    assert (df.status.str.startswith("cited")).sum() == 4


def test_ablation_tables(rendered):
    t2, t4 = (rendered[n][0].set_index("model") for n in ["table2", "table4"])
    assert list(t2.columns) == ["params", "paper_params", "train_ppl", "paper_train_ppl", "valid_ppl",
                                "paper_valid_ppl", "valid_diff", "ms_per_batch", "ours_device",
                                "paper_ms_per_batch", "paper_device", "status", "run"]
    row = t2.loc["VLNHMM (2^14)"]
    assert row.status.startswith("cut short: max_steps 300") and row.valid_diff == pytest.approx(6.5)
    assert row.ms_per_batch == 12.35 and row.ours_device == "cpu" and row.paper_device == "RTX 2080"
    assert row.paper_ms_per_batch == 40 and row.train_ppl == 120.25
    assert t2.loc["- neural param"].status == "not run" and math.isnan(t2.loc["- neural param"].valid_ppl)
    fac = t4.loc["+ block emb"]
    assert fac.status == ("reference: measured (NVIDIA H100 80GB HBM3, 2025-11-20, commit 0123456789)")
    assert fac.valid_ppl == 137.5 and fac.valid_diff == pytest.approx(1.5) and fac.run == "ptb/vlnhmm-16384-factored"
    assert "+ block emb" not in t2.index


def test_table3_duplicate_row(rendered):
    df = rendered["table3"][0]
    both = df[df.run == "ptb/vlnhmm-16384"]
    assert list(both.paper_valid_ppl) == [134, 136] and list(both.valid_diff) == pytest.approx([6.5, 4.5])
    assert df.loc[df.constraint == "None", "states_per_word"].isna().all()
    assert (df.status == "not run").sum() == len(df) - 2


def test_figures(rendered):
    f3 = rendered["fig3"][0]
    ours = f3[f3.series == "ours"]
    assert list(ours.x) == [16384, 32768] and ours.valid_ppl.iloc[0] == 140.5 and math.isnan(ours.valid_ppl.iloc[1])
    assert ours.status.iloc[1] == NOT_RUN["ptb/vlnhmm-32768"]
    paper = f3[f3.series == "paper (table values)"]
    assert list(zip(paper.x, paper.valid_ppl)) == [(16384, 134), (32768, 125.0)]
    f4 = rendered["fig4"][0]
    assert set(f4.series) == {"ours independent", "ours factored", "paper independent (table values)",
                              "paper factored (table values)"}
    fac = f4[f4.series == "ours factored"].iloc[0]
    assert fac.x == 128 and fac.valid_ppl == 137.5 and fac.status.startswith("reference: measured")
    assert len(f4[f4.series == "paper independent (table values)"]) == 4


def test_api_with_dicts_and_nothing_run(tmp_path):
    """build_* take plain dicts; with no runs every row / point is still there and nothing is filled in."""
    for name in ["table1", "table2", "table3", "table4"]:
        df = build_table(name, PAPER, [])
        assert len(df) == len(_paper_rows(name)) and df["valid_ppl"].isna().all()
    run = {"spec": {"name": "vlnhmm-1024", "dataset": "ptb", "rows": ["fig3"], "settings": _settings(1024)},
           "metrics": None}
    df = build_figure("fig3", PAPER, [run])
    assert df.iloc[0].status == "not run" and pd.isna(df.iloc[0].valid_ppl) and df.iloc[0].source == "ptb/vlnhmm-1024"
    main(["figure", "--name", "fig4", "--paper", str(PAPER_YAML), "--csv", str(tmp_path / "f.csv"),
          "--png", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").stat().st_size > 10_000
