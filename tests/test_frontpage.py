"""The report's front page (pipeline.reporting.frontpage): its verdict counted from the tables' CSVs.

Fast checks on synthetic CSVs with every status kind; then (marked ``pipeline``) the tiny profile's
real report: ``snakemake --report`` is rendered and its landing page's verdict lines are checked
against the CSVs, counted again here independently.
"""
from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts

from pipeline.reporting.frontpage import ITEMS, read_csv, render, summarize, verdict_line
from conftest import tiny_retrain_args

ROOT = Path(__file__).resolve().parent.parent
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
KINDS = ("measured", "reference", "cut short", "incomplete", "stale", "not run", "cited")


def _table(statuses, pcts, beyond=None):
    return pd.DataFrame({"paper_model": [f"m{i}" for i in range(len(statuses))], "status": statuses,
                         "run": [f"ptb/r{i}" for i in range(len(statuses))], "valid_diff_pct": pcts,
                         "valid_beyond_pct": beyond or [None] * len(statuses), "n": [1] * len(statuses),
                         "commit": ["abc1234567"] * len(statuses), "date": ["2026-01-02T03:04:05+00:00"] * len(statuses),
                         "device": ["cpu (2 cores)"] * len(statuses), "seed": [1111] * len(statuses)})


SYNTHETIC = _table(
    ["measured", "measured", "reference: measured (H100, 2026-01-01, commit 1)", "cut short: max_steps 3",
     "incomplete: check 2 of 8", "stale: trained with lr=0.1, the config says lr=0.01 (rerun it)",
     "not run: needs a GPU", "cited: Merity et al. (2017)"],
    [2.5, -10.0, -3.0, 40.0, None, None, None, None], [0.0, -6.0, 0.0, 35.0, None, None, None, None])


def count(name: str, df: pd.DataFrame) -> dict:
    """The verdict's numbers, counted independently of pipeline.reporting.frontpage."""
    rows = df if name.startswith("table") else df[df["series"].str.startswith("ours")]
    kinds = {k: sum(1 for s in rows["status"] if s == k or str(s).startswith(k + ":")) for k in KINDS}
    pcts = rows[[c for c in rows if c.endswith("_diff_pct")]]
    compared = pcts.notna().any(axis=1)
    within = (pcts.abs().le(3.0) | pcts.isna()).all(axis=1) & compared
    beyond = rows[[c for c in rows if c.endswith("_beyond_pct")]]
    intervals = beyond.notna().any(axis=1)
    inside = (beyond.eq(0) | beyond.isna()).all(axis=1) & intervals
    return {"rows": len(rows), "kinds": kinds, "compared": int(compared.sum()), "within": int(within.sum()),
            "intervals": int(intervals.sum()), "inside": int(inside.sum())}


def parse(line: str) -> dict:
    """A verdict line's numbers: rows, the count of each status kind it names, compared, within."""
    m = re.search(r"\): (\d+) (?:rows|points of ours): (.*?); (?:\d+ paper points; )?within \u00b13 % of the paper"
                  r"(?: at the paper's x)?: (\d+) of (\d+) compared", line)
    assert m, line
    named = {k: int(n) for n, k in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)", m.group(2))}
    inside = re.search(r"the paper's number inside our 95 % interval: (\d+) of (\d+)", line)
    assert inside, line
    return {"rows": int(m.group(1)), "kinds": named, "within": int(m.group(3)), "compared": int(m.group(4)),
            "inside": int(inside.group(1)), "intervals": int(inside.group(2))}


def check(line: str, want: dict) -> None:
    got = parse(line)
    assert (got["rows"], got["compared"], got["within"]) == (want["rows"], want["compared"], want["within"]), line
    assert (got["inside"], got["intervals"]) == (want["inside"], want["intervals"]), line
    for kind, n in want["kinds"].items():
        assert got["kinds"].get(kind, 0) == n, (kind, line)
    assert sum(got["kinds"].values()) == want["rows"], line  # every row is counted under one kind


def test_verdict_counts_every_status_kind():
    s = summarize("table2", SYNTHETIC)
    line = verdict_line("table2", PAPER["table2"]["caption"], s)
    assert line.startswith("**Table 2** (ablations on PTB): 8 rows: 2 measured, 1 reference, 1 cut short, "
                           "1 incomplete, 1 stale, 1 not run, 1 cited;")
    check(line, count("table2", SYNTHETIC))
    assert "within \u00b13 % of the paper: 2 of 4 compared" in line  # +2.5 and -3.0; -10 and +40 are not
    assert "inside our 95 % interval: 2 of 4 (the others differ by a median +14.5 % beyond the noise)" in line
    none = summarize("table2", SYNTHETIC.assign(status="not run: needs a GPU", valid_diff_pct=None,
                                                valid_beyond_pct=None))
    assert verdict_line("table2", "Table 2: x", none) == \
        "**Table 2** (x): 8 rows: 0 measured, 8 not run; within \u00b13 % of the paper: 0 of 0 compared; " \
        "the paper's number inside our 95 % interval: 0 of 0."


def test_front_page_is_valid_rst_with_the_facts():
    frames = {"table2": SYNTHETIC}
    page = render(frames, PAPER, "tiny", "tiny profile: |Z|/32", commit="abc1234567", machine="box: cpu, 2 cores",
                  now="2026-01-02 03:04 UTC")
    for fact in ("**Commit**: ``abc1234567``", "box: cpu, 2 cores", "2026-01-02 03:04 UTC", "``tiny``",
                 "**How sure.**", "n = 1 seed(s) (seeds 1111)", "1,000 resamples", "**Not comparable.**"):
        assert fact in page, fact
    links = "\n".join(f".. _{t}: #" for t in ("Tables", "Figures", "Training curves", "table2.png", "table2.html"))
    body = publish_parts(page + "\n" + links, writer="html",
                         settings_overrides={"report_level": 2, "halt_level": 2})["html_body"]  # a warning fails
    assert "tiny profile: |Z|/32" in html.unescape(re.sub(r"<[^>]+>", "", body))


@pytest.mark.pipeline
def test_tiny_report_front_page_matches_the_csvs():
    """snakemake --report on the tiny profile: the landing page is the front page, its verdict the CSVs'."""
    tiny = ROOT / "tiny"
    for args in (["all", *tiny_retrain_args()], ["--report", "results/report.html"]):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/tiny", *args], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Report: {tiny / 'results/report.html'}" in proc.stderr  # snakemake says where the report is
    report = (tiny / "results/report.html").read_text()
    desc = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", report).group(1))
    text = html.unescape(re.sub(r"<[^>]+>", "", desc))
    assert "Scaling Hidden Markov Language Models: reproduction report" in text and "How sure." in text
    assert "tiny profile" in text and re.search(r"Commit: [0-9a-f]{10}", text) and "Hardware:" in text
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^(Table [1-4]|Figure [34]) \(.*?\): \d+ (?:rows|points "
                                                          r"of ours): .*$", text, re.M)}
    assert len(lines) == len(ITEMS)
    for name in ITEMS:
        df = read_csv(tiny / f"results/{name}.csv")
        assert set(df["profile"]) == {"tiny"}
        head = PAPER[name]["caption"].split(":")[0]
        check(lines[head], count(name, df))
    results = json.loads(re.search(r"var results = (\{.*?\});\n", report).group(1))
    for name in ITEMS:  # each table and figure as image, sortable table and CSV, labelled
        for ext, form in (("png", "image"), ("html", "sortable table"), ("csv", "CSV")):
            assert results[f"results/{name}.{ext}"]["labels"]["form"] == form
        assert "Profile:" in results[f"results/{name}.png"]["caption"]


def test_the_hardware_line_names_each_machine_once_with_its_precisions():
    from pipeline.reporting.frontpage import devices_text
    assert devices_text(["AMD EPYC (2 cores); bf16 training", "AMD EPYC (2 cores); fp32 training",
                         "AMD EPYC (2 cores)", "NVIDIA H100"]) == "AMD EPYC (2 cores) (bf16, fp32 training), NVIDIA H100"
    # the settings table's devices row too (a KN5 row, trained in no precision, beside a trained one was listed
    # as a second machine: "AMD EPYC (2 cores), AMD EPYC (2 cores); fp32 training")
    from pipeline.reporting.frontpage import settings_rows
    rows = _table(["measured", "measured"], [1.0, 2.0]).assign(device=["AMD EPYC (2 cores)", "AMD EPYC (2 cores); fp32 training"])
    assert dict((k, ours) for k, _, ours in settings_rows({"table1": rows}))["devices"] == "AMD EPYC (2 cores) (fp32 training)"
