"""The committed results: every filed reference run matches its record and fills its table row under today's
config, and the README's hand-kept numbers (status table, fidelity table) are the committed records' own."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pipeline.config import resolve_runs
from pipeline.profiles import load_config
from pipeline.reporting.runs import load_runs, record_problem

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results/reference"
FILED = sorted(p.parent for p in REFERENCE.glob("**/metrics.json") if "_sessions" not in p.parts)
README = (ROOT / "README.md").read_text()


def _key(path: Path) -> tuple[str | None, str]:
    """(recipe or None for the default, dataset/run) of a reference directory."""
    parts = path.relative_to(REFERENCE).parts
    return (parts[0] if len(parts) == 3 else None), "/".join(parts[-2:])


@pytest.mark.parametrize("path", FILED, ids=lambda p: str(p.relative_to(REFERENCE)))
def test_a_filed_run_matches_its_record_and_fills_its_row(path):
    assert record_problem(path, "re-import it") is None
    recipe, key = _key(path)
    config = load_config(None, None, [f"recipe={recipe}"] if recipe else None)
    specs = [r.to_dict() for r in resolve_runs(config) if r.key == key]
    assert specs, f"{key} is no run of the {recipe or 'default'} recipe's config"
    (run,) = load_runs(specs, ROOT / "no-local-runs", REFERENCE)
    recorded = json.loads((path / "metrics.json").read_text())["status"]
    assert recorded == "measured" or recorded.startswith("cut short: "), recorded  # only a run that ended is filed
    assert run["status"].startswith(f"reference: {recorded}"), run["status"]


def _status_rows() -> list[tuple[str, str]]:
    """(reference path, 'ours vs the paper' cell) of each README status row that cites a filed run (its status
    cell starting with `measured` or `cut short`)."""
    rows = []
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        cited = re.search(r"`(results/reference/[^`]+)`", line)
        if len(cells) == 3 and cited and re.match(r"(measured|cut short)\b", cells[1]):
            rows.append((cited.group(1), cells[2]))
    return rows


def test_the_readme_status_rows_cite_every_filed_run():
    cited = {ROOT / p for p, _ in _status_rows()}
    assert cited == set(FILED), {str(p.relative_to(ROOT)) for p in cited ^ set(FILED)}


@pytest.mark.parametrize("path,cell", _status_rows(), ids=[p for p, _ in _status_rows()])
def test_the_readme_numbers_are_the_records(path, cell):
    m = json.loads((ROOT / path / "metrics.json").read_text())
    seen = 0
    for split in ("valid", "test"):
        said = re.search(rf"\b{split} (\d+\.\d\d)(?: \[(\d+\.\d\d), (\d+\.\d\d)\])?", cell)
        if not said:
            continue
        seen += 1
        assert said.group(1) == f"{m[f'{split}_ppl']:.2f}", (split, cell)
        if said.group(2):
            lo, hi = m[f"{split}_ppl_interval"]
            assert (said.group(2), said.group(3)) == (f"{lo:.2f}", f"{hi:.2f}"), (split, cell)
    assert seen, f"no number of {path} in its row: {cell}"


def test_the_readme_fidelity_table_is_the_csv():
    rows = list(csv.DictReader((ROOT / "results/fidelity.csv").open()))
    table = README.split("| switched | valid ppl |")[1].split("\n\n")[0]
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]
    assert len(lines) == len(rows)
    default = {f"{float(r['default_ppl_mean']):.2f}" for r in rows}
    assert len(default) == 1 and f"default {default.pop()}" in README
    for cells, row in zip(lines, rows):
        diff = float(row["difference"])
        assert cells[1] == f"{float(row['switched_ppl_mean']):.2f}", cells
        assert cells[2].replace("\u2212", "-") == (f"{diff:+.2f}" if diff else "0.00"), cells
        assert cells[3].split()[0] == row["exceeds_seed_spread"], cells


def test_a_measured_reference_of_todays_settings_stays_and_one_of_old_settings_is_replaced(tmp_path):
    """file_local (and the node importer, through pipeline.references) keeps a measured reference over a cut-short
    run unless forced, but only one trained from today's settings: a measured reference of other settings counts
    for nothing (its row says stale) and gives way to today's cut-short run."""
    from pipeline.integrity import record_dir
    from pipeline.node.importer import file_local
    from pipeline.references import filed_reference, keeps_reference, measured_reference

    config = load_config(None, None, None)
    run = {r.key: r for r in resolve_runs(config)}["ptb/lstm"]
    ref, out = tmp_path / "reference", tmp_path / run.out_dir

    def filed(status: str, valid: float, spec: dict) -> None:
        (ref / run.filed_as).mkdir(parents=True, exist_ok=True)
        (ref / run.filed_as / "metrics.json").write_text(json.dumps({"status": status, "spec": spec, "valid_ppl": valid}))

    def trained(status: str, valid: float) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"status": status, "spec": run.result_spec(), "valid_ppl": valid,
                                                      "device_name": "test CPU"}))
        record_dir(out, ["metrics.json"])
        return file_local([run.key], config, ref, work=tmp_path)

    def valid_filed() -> float:
        return json.loads((ref / run.filed_as / "metrics.json").read_text())["valid_ppl"]

    assert filed_reference(run, ref) is None and keeps_reference(run, "cut short: time", ref) is None
    filed("measured", 100.0, run.result_spec())
    assert measured_reference(run, ref)["valid_ppl"] == 100.0
    result = trained("cut short: time, max_seconds 60 (3.00 of 50 epochs)", 150.0)
    assert result["kept"] and not result["imported"] and valid_filed() == 100.0
    assert "kept the measured reference" in result["kept"][0][1]
    assert trained("measured", 90.0)["imported"] == [run.key] and valid_filed() == 90.0  # measured replaces measured

    older = json.loads(json.dumps(run.result_spec()))
    older["settings"]["dropout"] = 0.1  # trained from settings that are no longer the config's
    filed("measured", 80.0, older)
    assert filed_reference(run, ref) is None and measured_reference(run, ref) is None
    assert trained("cut short: time, max_seconds 60 (3.00 of 50 epochs)", 150.0)["imported"] == [run.key]
    assert valid_filed() == 150.0


def test_a_tiny_run_is_filed_beside_the_tiny_runs_never_into_the_committed_tree(tmp_path, capsys):
    """`./repro import --local ptb/ff --profile profiles/tiny` reads the run in the tiny profile's working
    directory and files it under that directory's results/reference/ (which the tiny tables and status read);
    the committed reference of the full-size ptb/ff is untouched."""
    from pipeline.integrity import record_dir
    from pipeline.node import importer
    from pipeline.references import filing_roots

    committed = (REFERENCE / "ptb/ff/metrics.json").read_bytes()
    config = load_config("profiles/tiny", None, None)
    assert filing_roots(config, tmp_path) == (tmp_path / "results/reference", tmp_path / "results/bench")
    assert filing_roots(load_config("profiles/cpu", None, None), tmp_path) == (REFERENCE, ROOT / "results/bench")
    run = {r.key: r for r in resolve_runs(config)}["ptb/ff"]
    out = tmp_path / run.out_dir
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"status": "measured", "spec": run.result_spec(), "valid_ppl": 500.0,
                                                  "device_name": "test CPU"}))
    record_dir(out, ["metrics.json"])
    assert importer.main(["--local", "ptb/ff", "--profile", "profiles/tiny", "--directory", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results/reference/ptb/ff/metrics.json").read_text())["valid_ppl"] == 500.0
    assert (REFERENCE / "ptb/ff/metrics.json").read_bytes() == committed
    assert f"filed ptb/ff -> {tmp_path / 'results/reference/ptb/ff'}" in capsys.readouterr().out
