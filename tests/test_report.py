"""pipeline.reporting.report and pipeline.training.curves: paper tables / figures from run specs + metrics (fast, no training).

Runs laid out in tmp_path: ptb/kn5 measured, ptb/vlnhmm-16384 cut short, ptb/vlnhmm-32768 not
run (reason given), ptb/vlnhmm-16384-factored only in a reference directory, wt2/lstm not run
(no reason: default).  The CLI renders every table and figure with the real config/paper.yaml and
config/config.yaml (the paper's settings per row), as a profile that scales |Z| by 32 and M by 8
where the figures need it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.training import curves
from pipeline.integrity import record_dir
from pipeline.reporting.frames import build_figure, build_table
from pipeline.reporting.report import main
from pipeline.reporting.runs import status_kind
from pipeline.reporting.text import title_lines
from pipeline.training.curves import run_label

ROOT = Path(__file__).resolve().parents[1]
PAPER_YAML = ROOT / "config" / "paper.yaml"
CONFIG_YAML = ROOT / "config" / "config.yaml"
PAPER = yaml.safe_load(PAPER_YAML.read_text())
NOT_RUN = {"ptb/vlnhmm-32768": "not run: no GPU on this machine (gpu_runs: auto)"}
PROV = {"commit": "0123456789abcdef0123", "date": "2025-11-20T10:00:00+00:00", "host": "gpu-box"}
LABEL = "test profile: |Z|/32, M/8"


def _metrics(status, valid, test=None, train=None, params=1000, ms=None, device="cpu", epochs=None, steps=None):
    return {"params": params, "train_ppl": train, "valid_ppl": valid, "test_ppl": test, "status": status,
            "eval_ms_per_batch": ms, "device_name": device, "wall_seconds": 1.0, "provenance": PROV,
            "epochs": epochs, "steps": steps}


def _settings(num_states, num_clusters=128, state_repr="independent"):
    return {"num_states": num_states, "num_clusters": num_clusters, "state_repr": state_repr, "neural": True,
            "state_dropout": 0.5, "constraint": "brown"}


RUNS = {  # key -> (model, rows, settings, local metrics, reference metrics)
    "ptb/kn5": ("kn5", ["table1/kn5"], {"order": 5}, _metrics("measured", 150.123, 141.456, params=2_100_000), None),
    "ptb/vlnhmm-16384": (
        "vlnhmm", ["table2/vlnhmm", "table4/vlnhmm", "table3/brown-16384-m128-a", "table3/brown-16384-m128-b",
                   "fig3", "fig4"],
        _settings(16384), _metrics("cut short: max_steps 300 (0.4 of 50 epochs)", 140.5, 139.0, train=120.25,
                                   params=7_200_000, ms=12.346, epochs=0.4, steps=300), None),
    "ptb/vlnhmm-32768": ("vlnhmm", ["table1/vlnhmm", "fig3"], _settings(32768), None, None),
    "ptb/vlnhmm-16384-factored": (
        "vlnhmm", ["table4/factored", "fig4"], _settings(16384, state_repr="factored"), None,
        _metrics("measured", 137.5, train=121.0, params=5_600_000, ms=30.0, device="NVIDIA H100 80GB HBM3",
                 epochs=50.0, steps=100_000)),
    "wt2/lstm": ("lstm", ["table1/lstm"], {"layers": 2, "hidden": 256}, None, None),
}


def _specs():
    specs = []
    for key, (model, rows, settings, _, _) in RUNS.items():
        dataset, name = key.split("/")
        specs.append({"name": name, "dataset": dataset, "model": model, "rows": rows, "settings": settings,
                      "train": None if model == "kn5" else {"seed": 1111, "epochs": 50}})
    return specs


def _render(tmp, name):
    kind = "table" if name.startswith("table") else "figure"
    out = {ext: tmp / f"{name}.{ext}" for ext in ("csv", "png", "html")}
    main([kind, "--name", name, "--paper", str(PAPER_YAML), "--paper-config", str(CONFIG_YAML),
          "--runs", json.dumps(_specs()), "--runs-dir", str(tmp / "runs"),
          "--reference", str(tmp / "reference"), "--not-run", json.dumps(NOT_RUN), "--profile", "test",
          "--label", LABEL,
          "--csv", str(out["csv"]), "--png", str(out["png"]), "--html", str(out["html"])])
    # keep_default_na=False: "None" is a table 3 constraint, not a missing value
    return pd.read_csv(out["csv"], keep_default_na=False, na_values=[""]), out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    for spec, (_, _, _, local, ref) in zip(_specs(), RUNS.values()):
        key = f"{spec['dataset']}/{spec['name']}"
        trained = {k: v for k, v in spec.items() if k != "rows"}  # what a run records in its metrics
        for where, metrics in (("runs", local), ("reference", ref)):
            if metrics:
                (tmp / where / key).mkdir(parents=True)
                (tmp / where / key / "metrics.json").write_text(json.dumps(metrics | {"spec": trained}))
                record_dir(tmp / where / key, ["metrics.json"])  # as the run (or ./repro import) leaves it
    return {name: _render(tmp, name) for name in ["table1", "table2", "table3", "table4", "fig3", "fig4"]}


def _paper_rows(name):
    rows = PAPER[name]["rows"]
    return [(ds, r) for ds, rs in rows.items() for r in rs] if isinstance(rows, dict) else [(None, r) for r in rows]


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "table4", "fig3", "fig4"])
def test_png_and_html_written(rendered, name):
    df, out = rendered[name]
    png = out["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    page = out["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script>" in page and 'href="data:text/csv;base64,' in page
    assert "src=\"http" not in page and "href=\"http" not in page  # self-contained: works offline
    assert LABEL in page and all(f"<th class=" in page and f">{c}</th>" in page for c in df.columns)
    assert page.count("<tr>") == len(df) + 1
    assert set(df["profile"]) == {"test"}


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "table4"])
def test_every_paper_row_in_order(rendered, name):
    df = rendered[name][0]
    rows = _paper_rows(name)
    assert len(df) == len(rows)
    label = "constraint" if name == "table3" else "paper_model"
    assert list(df[label]) == [r["constraint" if name == "table3" else "model"] for _, r in rows]
    for (_, r), (_, got) in zip(rows, df.iterrows()):
        for col in ["valid", "test", "train", "ms_per_batch"]:
            paper_col = f"paper_{col}" if col == "ms_per_batch" else f"paper_{col}_ppl"
            if paper_col in df:
                want = r.get(col)
                assert (math.isnan(got[paper_col]) if want is None else got[paper_col] == want), (r, col)
        if r.get("cited"):
            assert got["status"] == f"cited: {r['cited']}" and pd.isna(got["run"]) and pd.isna(got["valid_ppl"])
    measured = df[df.status.map(status_kind).isin(["measured", "cut short", "reference"])]
    for c in [c for c in df if c.endswith("_diff")]:  # diff = ours - paper, NaN unless both exist
        ours, paper = df[c.replace("_diff", "_ppl")], df["paper_" + c.replace("_diff", "_ppl")]
        assert ((df[c] - (ours - paper)).abs().fillna(0) < 1e-9).all()
        assert ((df[c + "_pct"] - 100 * (ours - paper) / paper).abs().fillna(0) < 0.051).all()
        assert df[c].notna().sum() <= len(measured) and (df[c].isna() == df[c + "_pct"].isna()).all()
    unfilled = df[df.status.str.startswith(("not run", "cited"))]
    assert unfilled[[c for c in df if c.endswith("_ppl") and not c.startswith("paper_")]].isna().all().all()
    assert unfilled[["commit", "date", "device"]].isna().all().all()
    assert (measured["commit"] == PROV["commit"]).all() and (measured["date"] == PROV["date"]).all()


def test_table1_values(rendered):
    df = rendered["table1"][0].set_index(["dataset", "paper_model"])
    kn5 = df.loc[("ptb", "KN 5-gram")]
    assert kn5.status == "measured" and kn5.run == "ptb/kn5" and kn5.params == 2_100_000 and kn5.model == "KN 5-gram"
    assert kn5.valid_ppl == 150.12 and math.isnan(kn5.valid_diff)  # the paper reports no KN valid on PTB
    assert kn5.test_ppl == 141.46 and kn5.test_diff == pytest.approx(0.26) and kn5.test_diff_pct == pytest.approx(0.2)
    assert kn5.paper_params == "2M" and pd.isna(kn5.epochs) and pd.isna(kn5.seed)
    vl = df.loc[("ptb", "VLNHMM |Z| = 2^15")]
    assert vl.status == NOT_RUN["ptb/vlnhmm-32768"] and vl.run == "ptb/vlnhmm-32768"
    assert vl.model == "VLNHMM |Z| = 32768, M = 128"  # our run's label, not the paper's
    assert math.isnan(vl.valid_ppl) and math.isnan(vl.params) and vl.paper_valid_ppl == 125.0
    # the paper's setting comes from the full config's run for the same row
    assert (vl.num_states, vl.paper_num_states, vl.num_clusters, vl.paper_num_clusters) == (32768, 32768, 128, 128)
    assert vl.paper_epochs == 50 and vl.seed == 1111
    lstm = df.loc[("wt2", "2x256 LSTM")]
    assert lstm.status == "not run" and math.isnan(lstm.test_ppl) and lstm.model == "2x256 LSTM"
    wt2_kn5 = df.loc[("wt2", "KN 5-gram")]  # the ptb kn5 run must not fill the wt2 row
    assert wt2_kn5.status == "not run" and pd.isna(wt2_kn5.run)
    assert (df.status.str.startswith("cited")).sum() == 4
    assert df.loc[("ptb", "256 FF 5-gram")].paper_epochs == 100  # FF: 100 epochs in the paper


def test_ablation_tables(rendered):
    t2, t4 = (rendered[n][0].set_index("paper_model") for n in ["table2", "table4"])
    row = t2.loc["VLNHMM (2^14)"]
    assert row.status.startswith("cut short: max_steps 300") and row.valid_diff == pytest.approx(6.5)
    assert row.valid_diff_pct == pytest.approx(4.9) and row.epochs == 0.4 and row.steps == 300
    assert row.ms_per_batch == 12.35 and row.device == "cpu" and row.paper_device == "RTX 2080"
    assert row.paper_ms_per_batch == 40 and row.train_ppl == 120.25 and row.model == "VLNHMM |Z| = 16384, M = 128"
    assert t2.loc["- neural param"].status == "not run" and math.isnan(t2.loc["- neural param"].valid_ppl)
    fac = t4.loc["+ block emb"]
    assert fac.status == ("reference: measured (NVIDIA H100 80GB HBM3, 2025-11-20T10:00:00+00:00, commit 0123456789)")
    assert fac.valid_ppl == 137.5 and fac.valid_diff == pytest.approx(1.5) and fac.run == "ptb/vlnhmm-16384-factored"
    assert fac.model == "VLNHMM |Z| = 16384, M = 128 + block emb" and fac.device == "NVIDIA H100 80GB HBM3"
    assert "+ block emb" not in t2.index


def test_table3_ours_beside_the_papers_configuration(rendered):
    df = rendered["table3"][0]
    both = df[df.run == "ptb/vlnhmm-16384"]
    assert list(both.paper_valid_ppl) == [134, 136] and list(both.valid_diff) == pytest.approx([6.5, 4.5])
    assert list(both.num_states) == [16384, 16384] and list(both.states_per_word) == [128, 128]
    assert df.loc[df.constraint == "None", "paper_states_per_word"].isna().all()
    first = df.iloc[0]  # Brown 16384 / 512 / 32: the paper's configuration, ours not run
    assert (first.paper_num_states, first.paper_states_per_word, first.paper_num_clusters) == (16384, 512, 32)
    assert pd.isna(first.num_states) and pd.isna(first.states_per_word)
    assert (df.status == "not run").sum() == len(df) - 2


def test_titles_mark_the_papers_settings(rendered):
    df = rendered["table2"][0]
    title = title_lines(PAPER["table2"]["caption"], df, LABEL)
    assert title[0].startswith("Table 2: ablations on PTB (paper: lambda = 0.5, M = 128)")
    assert title[1].startswith("ours: ") and "seed 1111" in title[1] and title[2] == f"[{LABEL}]"
    plain = title_lines(PAPER["table3"]["caption"], rendered["table3"][0], None)
    assert "paper:" not in plain[0] and plain[2].startswith("[full configuration")


def test_figures(rendered):
    f3 = rendered["fig3"][0]
    ours = f3[f3.series == "ours"]
    assert list(ours.x) == [16384, 32768] and list(ours.run_x) == [16384, 32768]
    assert ours.valid_ppl.iloc[0] == 140.5 and math.isnan(ours.valid_ppl.iloc[1])
    assert ours.paper_valid_ppl.iloc[0] == 134 and ours.valid_diff.iloc[0] == pytest.approx(6.5)
    assert ours.status.iloc[1] == NOT_RUN["ptb/vlnhmm-32768"] and ours.epochs.iloc[0] == 0.4
    paper = f3[f3.series == "paper (table values)"]
    # 2^14 states, M = 128: both values the tables give (134; Table 3's second listing 136); ours against the first
    assert list(zip(paper.x, paper.paper_valid_ppl)) == [(16384, 134), (16384, 136), (32768, 125.0)]
    assert paper.valid_ppl.isna().all()  # the paper's values are never in our column
    f4 = rendered["fig4"][0]
    assert set(f4.series) == {"ours independent", "ours factored", "paper independent (table values)",
                              "paper factored (table values)"}
    fac = f4[f4.series == "ours factored"].iloc[0]
    assert fac.x == 128 and fac.valid_ppl == 137.5 and fac.status.startswith("reference: measured")
    assert fac.paper_valid_ppl == 136 and fac.valid_diff == pytest.approx(1.5)
    assert len(f4[f4.series == "paper independent (table values)"]) == 5


def test_scaled_figure_plots_ours_at_the_paper_equivalent_x(tmp_path):
    """A profile at |Z|/32: our 512-state run sits at x = 16384, beside the paper's Table 2 point."""
    run = {"spec": {"name": "vlnhmm-512", "dataset": "ptb", "model": "vlnhmm", "rows": ["fig3"],
                    "settings": _settings(512, 16),
                    "train": {"seed": 7, "epochs": 1}},
           "metrics": {"valid_ppl": 140.0, "epochs": 1.0, "steps": 43, "provenance": PROV,
                       "device_name": "cpu", "status": "measured"}, "status": "measured"}
    df = build_figure("fig3", PAPER, [run], scale={"num_states": 32, "num_clusters": 8}, profile="tiny")
    ours = df.iloc[0]
    assert (ours.x, ours.run_x, ours.num_clusters) == (16384, 512, 16)
    assert ours.paper_valid_ppl == 134 and ours.valid_diff_pct == pytest.approx(4.5) and ours.seed == 7
    assert set(df.profile) == {"tiny"}


def _two_seeds(tmp):
    """ptb/ff over seeds 1111 and 2222, each with its record, as the runs leave them; their table 1 specs."""
    specs = []
    for name, seed, valid in (("ff", 1111, 348.82), ("ff@2222", 2222, 347.50)):
        spec = {"name": name, "dataset": "ptb", "model": "ff", "rows": ["table1/ff"],
                "settings": {"hidden": 256}, "train": {"seed": seed, "epochs": 100}}
        run = tmp / "runs/ptb" / name
        run.mkdir(parents=True)
        trained = {k: v for k, v in spec.items() if k != "rows"}
        (run / "metrics.json").write_text(json.dumps(_metrics("measured", valid, valid - 10) | {"spec": trained},
                                                     indent=2))
        record_dir(run, ["metrics.json"])
        specs.append(spec)
    return specs


def _ff_row(tmp, specs):
    main(["table", "--name", "table1", "--paper", str(PAPER_YAML), "--runs", json.dumps(specs), "--runs-dir",
          str(tmp / "runs"), "--reference", str(tmp / "reference"), "--csv", str(tmp / "t1.csv"),
          "--png", str(tmp / "t1.png")])
    return pd.read_csv(tmp / "t1.csv").set_index("run").loc["ptb/ff"]


def test_a_seed_edited_after_the_run_is_left_out_and_named(tmp_path):
    specs = _two_seeds(tmp_path)
    row = _ff_row(tmp_path, specs)
    assert row["status"] == "measured" and row["n"] == 2 and row["valid_ppl"] == pytest.approx(348.16)
    edited = tmp_path / "runs/ptb/ff@2222/metrics.json"
    edited.write_text(json.dumps(json.loads(edited.read_text()) | {"valid_ppl": 99.0, "test_ppl": 95.0}))
    row = _ff_row(tmp_path, specs)
    assert row["status"].startswith("modified after the run: seed 2222 (ptb/ff@2222) left out, so the row shows no "
                                    f"number: {edited} does not match its recorded SHA-256"), row["status"]
    assert pd.isna(row["valid_ppl"]) and pd.isna(row["test_ppl"]) and pd.isna(row["n"])


def test_a_truncated_or_unreadable_metrics_file_is_named(tmp_path):
    specs = _two_seeds(tmp_path)
    path = tmp_path / "runs/ptb/ff@2222/metrics.json"
    path.write_bytes(path.read_bytes()[:300])
    row = _ff_row(tmp_path, specs)
    assert f"{path} does not match its recorded SHA-256" in row["status"] and pd.isna(row["valid_ppl"])
    record_dir(path.parent, ["metrics.json"])  # recorded as it is: the check passes, the JSON does not parse
    row = _ff_row(tmp_path, specs)
    assert row["status"].startswith("modified after the run: seed 2222 (ptb/ff@2222) left out")
    assert f"{path} cannot be read as JSON (" in row["status"] and pd.isna(row["valid_ppl"])
    (path.parent / "SHA256SUMS").unlink()
    row = _ff_row(tmp_path, specs)
    assert f"{path.parent / 'SHA256SUMS'} is missing" in row["status"] and pd.isna(row["valid_ppl"])


def test_run_labels_name_what_was_trained():
    spec = {"model": "vlnhmm", "settings": {"num_states": 512, "num_clusters": 16, "constraint": "brown",
                                            "neural": False, "state_dropout": 0.5}}
    assert run_label(spec) == "VLNHMM |Z| = 512, M = 16 \u2212 neural param"
    assert run_label({"model": "vlnhmm", "settings": {"num_states": 256, "constraint": "uniform",
                                                      "states_per_word": 16, "state_dropout": 0.0}}) == \
        "VLNHMM |Z| = 256, uniform 16/word"
    assert run_label({"model": "ff", "settings": {"hidden": 64, "order": 5}}) == "64 FF 5-gram"
    assert [status_kind(s) for s in ("measured", "cut short: x", "incomplete: y", "stale: z", "not run",
                                     "reference: measured (...)", "cited: A", "paper value (Table 2)")] == \
        ["measured", "cut short", "incomplete", "stale", "not run", "reference", "cited", "paper"]


def test_api_with_dicts_and_nothing_run(tmp_path):
    """build_* take plain dicts; with no runs every row / point is still there and nothing is filled in."""
    for name in ["table1", "table2", "table3", "table4"]:
        df = build_table(name, PAPER, [])
        assert len(df) == len(_paper_rows(name)) and df["valid_ppl"].isna().all()
        assert set(df["profile"]) == {"full"}
    run = {"spec": {"name": "vlnhmm-1024", "dataset": "ptb", "rows": ["fig3"], "settings": _settings(1024)},
           "metrics": None}
    df = build_figure("fig3", PAPER, [run])
    assert df.iloc[0].status == "not run" and pd.isna(df.iloc[0].valid_ppl) and df.iloc[0].source == "ptb/vlnhmm-1024"
    main(["figure", "--name", "fig4", "--paper", str(PAPER_YAML), "--csv", str(tmp_path / "f.csv"),
          "--png", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").stat().st_size > 10_000 and not (tmp_path / "f.html").exists()


def test_curve_shows_settings_profile_and_the_papers_number(tmp_path, monkeypatch):
    run = tmp_path / "ptb" / "vlnhmm-512"
    run.mkdir(parents=True)
    pd.DataFrame({"step": [22, 43], "epoch": [0.51, 1.0], "lr": [0.01, 0.01], "train_ppl": [843.0, 447.7],
                  "valid_ppl": [266.2, 269.8], "tokens_per_s": [1, 1], "eval_ms_per_batch": [3.6, 3.5],
                  "wall_seconds": [1.5, 1.9]}).to_csv(run / "curve.csv", index=False)
    spec = {"name": "vlnhmm-512", "dataset": "ptb", "model": "vlnhmm", "rows": [],
            "settings": _settings(512, 16), "train": {"lr": 0.01, "batch_size": 16, "bptt": 32, "epochs": 1, "seed": 3}}
    (run / "spec.json").write_text(json.dumps(spec))
    (run / "metrics.json").write_text(json.dumps(_metrics("measured", 266.2, epochs=1.0, steps=43)))
    monkeypatch.setenv(curves.CONTEXT_ENV, json.dumps({"label": LABEL, "rows": {"ptb/vlnhmm-512": [
        "table2/vlnhmm", "table3/brown-16384-m128-a", "table3/brown-16384-m128-b"]}}))
    seen = {}
    real_savefig = curves.plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["texts"] = [t.get_text() for t in fig.texts]
        seen["legend"] = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        seen["yticks"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(curves.plt.Figure, "savefig", spy)
    curves.plot(run / "curve.csv", run / "curve.png", "ptb/vlnhmm-512")  # the call pipeline.training.train makes
    assert (run / "curve.png").stat().st_size > 10_000
    assert seen["texts"][0] == "ptb/vlnhmm-512: VLNHMM |Z| = 512, M = 16"
    assert "lr 0.01 (constant)" in seen["texts"][1] and "1 of 1 epochs (43 steps), seed 3" in seen["texts"][1]
    assert f"[{LABEL}]" in seen["texts"]
    assert "paper valid 134 (Tables 2, 3, ptb)" in seen["legend"] and "paper valid 136 (Table 3, ptb)" in seen["legend"]
    assert all("x10" not in t and "^" not in t for t in seen["yticks"])  # plain tick labels
    monkeypatch.delenv(curves.CONTEXT_ENV)
    curves.plot(run / "curve.csv", tmp_path / "bare.png", "ptb/vlnhmm-512")  # no context: still a curve
    assert (tmp_path / "bare.png").stat().st_size > 10_000
    assert curves.nice_log_ticks(230, 950) == [300, 400, 500, 700]


def test_a_reference_rows_commit_keeps_its_dirty_mark():
    from pipeline.reporting.runs import short_commit
    assert short_commit("1777e94d50e9041bd1a4ffff0000aaaa11112222-dirty") == "1777e94d50-dirty"
    assert short_commit("1777e94d50e9041bd1a4ffff0000aaaa11112222") == "1777e94d50"
    assert short_commit("1777e94d50-dirty") == "1777e94d50-dirty"  # the label pipeline.provenance writes


def test_the_ablation_pictures_name_the_papers_timing_gpu(rendered):
    from pipeline.reporting.render import table_cells
    heads, _, _ = table_cells("table2", rendered["table2"][0])
    assert "ms/batch (paper: RTX 2080)" in heads
    assert any("KN 5-gram params: ours count the n-gram entries" in n for n in PAPER["table1"]["notes"].values())
