"""Real Snakemake runs: the tiny profile end to end, then the DAG's behaviour on changes.

The tiny run writes to tiny/ (the profile's directory), so a second `./repro test` only redoes
what changed.  Other checks use dry runs (-n) or throw-away directories.
"""
import json
import lzma
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import merged_config, tiny_retrain_args
from pipeline.config import resolve_runs

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = ROOT / "tiny"
pytestmark = pytest.mark.pipeline


def snakemake(*args, profile="profiles/tiny", check=True):
    cmd = SNAKEMAKE + (["--profile", profile] if profile else []) + list(args)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict:
    """The 'Job stats' table of a (dry) run: rule -> count."""
    table = output.split("Job stats:")[-1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture(scope="module")
def tiny_all():
    proc = snakemake("all", *tiny_retrain_args())
    return proc.stdout + proc.stderr


def test_tiny_builds_every_table_and_figure(tiny_all):
    results = TINY / "results"
    for name in ("table1", "table2", "table3", "table4", "fig3", "fig4"):
        assert (results / f"{name}.csv").stat().st_size > 0
        assert (results / f"{name}.png").stat().st_size > 10_000
    t1 = pd.read_csv(results / "table1.csv")
    ours = t1[t1["run"].notna()]
    assert set(ours["status"]) == {"measured"}
    assert len(ours) == 8 and ours["valid_ppl"].notna().all() and ours["test_ppl"].notna().all()
    cited = t1[t1["status"].str.startswith("cited")]
    assert cited["valid_ppl"].isna().all() and len(cited) == 4


def test_tiny_hmm_beats_unigram(tiny_all):
    """The tiny VLNHMM (trained on CPU, TVM scan) is clearly better than the unigram model."""
    import numpy as np
    from pipeline.data.corpus import Corpus
    corpus = Corpus.load(TINY / "data/ptb")
    counts = np.bincount(corpus.splits["train"].numpy(), minlength=len(corpus.vocab)) + 1.0
    unigram = float(np.exp(-np.log(counts / counts.sum())[corpus.splits["valid"].numpy()].mean()))
    metrics = json.loads((TINY / "results/runs/ptb/vlnhmm-1024/metrics.json").read_text())
    spec = json.loads((TINY / "results/runs/ptb/vlnhmm-1024/spec.json").read_text())
    assert spec["settings"]["backend"] == "tvm" and metrics["backend"] == "tvm"
    assert metrics["valid_ppl"] < 0.85 * unigram, (metrics["valid_ppl"], unigram)


def test_each_run_is_scored_with_the_weights_it_names(tiny_all):
    """metrics.json's valid perplexity is the curve's at the check whose weights were tested (best_step for
    test_weights: best, the last check for last).  Several tiny runs' best check is not their last, so scoring
    the last weights in place of the best (or the reverse) shows here."""
    import csv
    checked, best_not_last = 0, 0
    for path in sorted((TINY / "results/runs").glob("*/*/metrics.json")):
        curve = path.with_name("curve.csv")
        if not curve.exists():  # KN5: nothing trained by checks
            continue
        m, rows = json.loads(path.read_text()), list(csv.DictReader(curve.open()))
        best = m["spec"]["train"]["test_weights"] == "best"
        at = m["best_step"] if best else int(rows[-1]["step"])
        (row,) = [r for r in rows if int(r["step"]) == at]
        assert m["valid_ppl"] == pytest.approx(float(row["valid_ppl"]), abs=2e-3), (path, at)
        if best and at != int(rows[-1]["step"]) and abs(float(rows[-1]["valid_ppl"]) - m["valid_ppl"]) > 0.1:
            best_not_last += 1
        checked += 1
    assert checked >= 10 and best_not_last >= 1, (checked, best_not_last)


def test_nothing_to_do_after_a_run(tiny_all):
    assert "Nothing to be done" in snakemake("-n", "all").stdout


def test_a_deleted_kernel_library_is_rebuilt(tiny_all):
    """Kernel libraries are tracked outputs: deleting one reruns the kernel rule (and what used it)."""
    user = next(r for r in _tiny_runs() if 4 in r.scan_sizes)
    target = f"results/runs/{user.key}/metrics.json"
    lib = TINY / "build/kernels/llvm/scan_n4.so"
    kept = lib.with_suffix(".kept")
    lib.rename(kept)
    try:
        by_name = job_counts(snakemake("-n", "build/kernels/llvm/scan_n4.so").stdout)
        retrain = job_counts(snakemake("-n", target, "--forcerun", target).stdout)
    finally:
        kept.rename(lib)  # same file, same mtime: the rest of the DAG stays up to date
    assert by_name == {"kernels_llvm": 1}
    assert retrain == {"kernels_llvm": 1, "train": 1}


def test_brown_config_change_reruns_only_dependents(tiny_all, tmp_path):
    overlay = tmp_path / "alpha.yaml"
    overlay.write_text("brown: {alpha: 2.0e-4}\n")
    out = snakemake("-n", "all", "--configfile", "config/tiny.yaml", str(overlay)).stdout
    jobs = job_counts(out)
    runs = _tiny_runs()
    brown = [r for r in runs if r.model == "vlnhmm" and r.settings.constraint == "brown"]
    assert jobs["brown_clusters"] == len({(r.dataset, r.settings.num_clusters) for r in brown})
    assert jobs["train"] == len(brown)
    assert not {"download_ptb", "download_wt2", "prepare", "kn5", "kernels"} & set(jobs)


def test_rerun_one_ablation(tiny_all):
    target = "results/runs/ptb/vlnhmm-512-m4/metrics.json"
    jobs = job_counts(snakemake("-n", target, "results/table3.csv", "results/fig4.csv", "--forcerun", target).stdout)
    assert jobs == {"train": 1, "table": 2}


def test_report(tiny_all):
    snakemake("--report", "results/report.html", "all")
    html = (TINY / "results/report.html").read_text(errors="ignore")
    assert "table1" in html and "fig4" in html and "curve" in html


def test_schema_rejects_unknown_key_and_wrong_type(tmp_path):
    """One line per problem, naming the key (a near one for a typo), not the whole schema and config."""
    for bad, expect in (({"brown": {"alpah": 1e-4}}, "brown/alpah: unknown key (did you mean `alpha`?)"),
                        ({"max_lines": {"train": "many"}}, "max_lines/train: 'many' is not of type 'integer', 'null'"),
                        ({"num_states": 64}, "num_states: unknown key (a run setting: it goes under `defaults: "
                                             "{vlnhmm: {num_states: ...}}` in a --configfile, or in a run's entry)")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        proc = snakemake("-n", "all", "--configfile", str(path), "--directory", str(tmp_path / "w"), check=False)
        out = proc.stderr + proc.stdout
        assert proc.returncode != 0 and "does not fit config/schema.yaml" in out and expect in out, out[-2000:]
        assert "Job stats" not in proc.stdout and len(out.splitlines()) < 25, out


def test_a_missing_or_malformed_configfile_is_one_line(tmp_path):
    """The project's snakemake command (./repro run) names the file and the YAML line before snakemake starts."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [1, 2\nbrown: 3\n")
    for path, expect in ((tmp_path / "none.yaml", "none.yaml: cannot be read (No such file or directory)"),
                         (bad, "bad.yaml is not valid YAML (line 2, column 6)")):
        proc = subprocess.run([str(ROOT / ".venv/bin/snakemake"), "-n", "all", "--configfile", str(path)],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and expect in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_corrupt_mirror_fails_the_download_rule(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(ROOT / ".test/data", mirror)
    packed = mirror / "ptb/ptb.train.txt.xz"
    data = bytearray(lzma.decompress(packed.read_bytes()))
    data[12345] ^= 0x20
    packed.write_bytes(lzma.compress(bytes(data)))
    work = tmp_path / "w"
    proc = snakemake("data/ptb/stats.json", "--config", f"mirror={mirror}", "--directory", str(work), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "checksum mismatch" in text and "ptb.train.txt" in text
    assert "expected sha256 01f81fd6" in text  # the tiny profile pins the prefix's hash
    # the last words say what to mend in the mirror given, not to give a mirror
    tail = proc.stderr.split("from the mirror")[-1]
    assert "Replace that file in the mirror" in tail and "checksum mismatch" in tail and "add --config mirror" not in tail
    assert not (work / "data/raw/ptb/ptb.train.txt").exists()
    assert not (work / "data/ptb/stats.json").exists()


def test_a_full_mirror_given_to_the_tiny_profile_is_named_as_the_cause(tmp_path):
    """The tiny profile checks its own slices' hashes; a mirror of the full files fails them, and the last
    words say to drop the mirror (not to mend it), with the expected and actual hashes."""
    from conftest import MIRROR
    if not MIRROR.is_dir():
        pytest.skip(f"the full-data mirror {MIRROR} is absent")
    proc = snakemake("data/raw/ptb/ptb.valid.txt", "--config", f"mirror={MIRROR}", "--directory", str(tmp_path),
                     check=False)
    tail = proc.stderr.split("from the mirror")[-1]
    assert proc.returncode != 0 and "expected sha256 " in tail and "actual   sha256 " in tail, proc.stderr[-3000:]
    assert "this mirror holds the full files: drop `--config mirror=...`" in tail
    assert "Replace that file" not in tail


def _tiny_runs():
    return resolve_runs(merged_config("config/config.yaml", "config/tiny.yaml"))


def _paper_runs():
    return resolve_runs(merged_config("config/config.yaml"))


def test_full_dag_lists_the_expected_jobs(tmp_path):
    targets = [f"results/table{n}.csv" for n in range(1, 5)] + ["results/fig3.png", "results/fig4.png"]
    out = snakemake("-n", "--cores", "8", "--resources", "gpu=1", "--config", "gpu_runs=always",
                    "--directory", str(tmp_path), *targets, profile=None).stdout
    runs = _paper_runs()
    trained = [r for r in runs if r.train is not None and r.rows]  # a run of no row (a diagnostic): own target only
    expected = {"dataset_spec_file": 2, "download_ptb": 1, "download_wt2": 1, "prepare": 2,
                "kn5": 2, "train": len(trained), "table": 6,
                "brown_clusters": len({(r.dataset, r.settings.num_clusters) for r in trained
                                       if r.model == "vlnhmm" and r.settings.constraint == "brown"})}
    jobs = job_counts(out)
    jobs.pop("total", None)
    assert jobs == expected


def test_gpu_runs_left_out_without_gpu_are_marked(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    proc = snakemake("-n", "-p", "--cores", "2", "--directory", str(tmp_path), "results/table1.csv", profile=None)
    assert "train" not in job_counts(proc.stdout)  # FF/LSTM/VLNHMM need a GPU by default
    line = next(line for line in proc.stdout.splitlines() if "--not-run " in line)  # the table job's command
    not_run = json.loads(shlex.split(line.split("--not-run ")[1])[0])
    # a row the CPU profile trains says so; the rest need a GPU
    assert not_run["wt2/lstm"].startswith("not run: needs a GPU here") and "--profile profiles/cpu" in not_run["wt2/lstm"]
    assert "profiles/cpu" not in not_run["ptb/vlnhmm-32768"] and not_run["ptb/vlnhmm-32768"].endswith("docs/gpu.md")
    assert "ptb/vlnhmm-32768" in proc.stderr and "left out of the DAG" in proc.stderr
    # the warning's ways forward work on this machine (not `gpu_runs: always`, which stops here)
    assert "--profile profiles/tiny" in proc.stderr and "--profile profiles/cpu" in proc.stderr
    assert "gpu_runs: always" not in proc.stderr


def test_a_dry_run_says_that_a_real_run_would_stop_for_want_of_a_gpu(tmp_path):
    """onstart's GPU check never runs in a dry run: the plan says beforehand that the real run would stop, with
    ways forward that fit the profile (under tiny: `device: cpu`, not the tiny profile it already is)."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    proc = snakemake("-n", "--directory", str(tmp_path), "results/table1.csv", profile="profiles/gpu")
    assert "GPU run(s) are in this DAG (gpu_runs: always)" in proc.stderr and "stops before its first job" in \
        proc.stderr, proc.stderr[-3000:]
    cuda = tmp_path / "cuda.yaml"
    cuda.write_text("defaults: {train: {device: cuda}}\n")
    proc = snakemake("-n", "--directory", str(tmp_path), "results/runs/ptb/lstm/metrics.json", "--configfile",
                     str(cuda))
    left_out, planned = (line for line in proc.stderr.splitlines() if line.startswith("WARNING"))
    assert "set `device: cpu` there" in left_out and "--profile profiles/tiny" not in left_out, left_out
    assert planned.startswith("WARNING: 1 GPU run(s)") and "--profile profiles/tiny" not in planned, planned
    assert job_counts(proc.stdout)["train"] == 1


def test_the_tiny_config_in_the_repository_root_is_refused():
    """Without its profile's directory, the tiny config's data and runs would land on the full-size ones."""
    proc = snakemake("all", "-n", "--cores", "1", "--configfile", "config/tiny.yaml", profile=None, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "would write its data and runs into the repository root" in out and "--profile profiles/tiny" in out


def test_slurm_profile_dry_run(tmp_path):
    out = snakemake("-n", "--config", "gpu_runs=always", "--directory", str(tmp_path), "results/table2.csv",
                    profile="profiles/slurm")
    text = out.stdout + out.stderr
    jobs = job_counts(text)
    assert jobs["train"] == 3 and jobs["table"] == 1
    assert re.search(r"gpu=1", text)


def test_benchmarks_run_on_cpu_in_the_tiny_profile():
    snakemake("results/bench/scale_cpu.csv", "results/bench/kernel_cpu.csv")
    scale = pd.read_csv(TINY / "results/bench/scale_cpu.csv")
    assert set(scale["path"]) == {"reference", "fast"} and (scale["status"] == "ok").all()
    assert {"train", "eval"} <= set(scale["mode"]) and scale["ms"].gt(0).all()
    assert (TINY / "results/bench/scale_cpu.png").stat().st_size > 10_000
    kernel = pd.read_csv(TINY / "results/bench/kernel_cpu.csv")
    from bench.kernels import OPS
    sizes = merged_config("config/config.yaml", "config/tiny.yaml")["bench"]["kernel_states"]
    # every size and op timed for both backends, torch's the speedup's baseline
    assert sorted(map(tuple, kernel[["n", "op", "backend"]].values.tolist())) == sorted(
        (n, op, b) for n in sizes for op in OPS for b in ("torch", "tvm"))
    assert kernel["ms_median"].gt(0).all() and kernel.loc[kernel.backend == "torch", "speedup_vs_torch"].eq(1).all()


def test_released_recipe_dag_sits_beside_the_default(tmp_path):
    """--config recipe=released-code: the same jobs, every output under results/released-code/, and the
    authors' cluster files (downloaded, then converted) instead of ours."""
    out = snakemake("-n", "--cores", "8", "--resources", "gpu=1", "--config", "gpu_runs=always",
                    "recipe=released-code", "--directory", str(tmp_path), "results/released-code/table3.csv",
                    profile=None).stdout
    jobs = job_counts(out)
    runs = [r for r in _paper_runs() if any(row.startswith("table3/") for row in r.rows) and r.train is not None]
    blocks = {r.settings.num_clusters for r in runs if r.settings.constraint == "brown"}
    assert jobs["table"] == 1 and jobs["train"] == len(runs)
    assert jobs["authors_paths"] == jobs["clusters_from_paths"] == len(blocks) and "brown_clusters" not in jobs
    outputs = re.findall(r"output: (\S+)", out)
    assert all(o.startswith(("results/released-code/", "data/")) for o in outputs), outputs


def test_tiny_fidelity_target():
    """results/fidelity.csv at tiny size: both recipes and each switch alone over the tiny profile's seeds."""
    snakemake("results/fidelity.csv")
    df = pd.read_csv(TINY / "results/fidelity.csv", keep_default_na=False, na_values=[""])
    assert list(df["switch"]) == ["released recipe (all)", "init", "lr-decay", "test-weights", "clusters",
                                  "eos-reset-off"]
    assert (df["default_n"] == 2).all() and (df["switched_n"] == 2).all() and df["difference"].notna().all()
    assert set(df["exceeds_seed_spread"]) <= {"yes", "no"}
    for side in ("default", "switched"):  # each side's 95 % interval surrounds its mean
        assert (df[f"{side}_ppl_lo"] < df[f"{side}_ppl_mean"]).all() and \
            (df[f"{side}_ppl_mean"] < df[f"{side}_ppl_hi"]).all()
    assert (TINY / "results/fidelity.png").stat().st_size > 10_000
    spec = json.loads((TINY / "results/runs/ptb/fidelity-released-code-s1112/metrics.json").read_text())["spec"]
    assert (spec["settings"]["init"], spec["train"]["test_weights"], spec["train"]["seed"]) == \
        ("torch-default", "last", 1112)


@pytest.mark.parametrize("command", [["pipeline.training.status"], ["pipeline.node.importer", "--local", "ptb/ff"],
                                     ["pipeline.node.bundle", "--out", "{tmp}/never-made", "--directory", "{tmp}"]])
def test_commands_outside_snakemake_say_a_bad_config_in_a_few_lines(command, tmp_path):
    words = [w.format(tmp=tmp_path) for w in command]
    proc = subprocess.run([sys.executable, "-m", *words, "--config", "mirorr=x"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "mirorr: unknown key (did you mean `mirror`?)" in proc.stderr and len(proc.stderr.splitlines()) <= 3
    assert not (tmp_path / "never-made").exists()


@pytest.mark.parametrize("entry, said", [("defaults.train.device=cpu", "is not a top-level config key"),
                                         ("gpu_runs", "is not KEY=VALUE")])
def test_a_config_entry_snakemake_cannot_parse_is_one_line_everywhere(entry, said, tmp_path):
    """snakemake's own parser raises a traceback for a dotted key; ./repro run, status and import say one line
    (./repro run's for an entry without `=` follows snakemake's usage, as its argument parser does)."""
    for cmd in ([str(ROOT / ".venv/bin/snakemake"), "-n", "all", "--directory", str(tmp_path), "--config", entry],
                [sys.executable, "-m", "pipeline.training.status", "--config", entry],
                [sys.executable, "-m", "pipeline.node.importer", "--local", "ptb/ff", "--config", entry]):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        if "snakemake" in cmd[0] and "=" not in entry:
            assert "is not NAME=VALUE" in lines[-1], lines[-1]
        else:
            assert said in proc.stderr and len(lines) == 1, proc.stderr[-3000:]


@pytest.mark.parametrize("target, said", [
    ("results/runs/ptb/vlnhmm-1025/metrics.json", "this config has no run ptb/vlnhmm-1025 (did you mean ptb/vlnhmm-1024"),
    ("tiny/results/table1.csv", "targets are relative to snakemake's working directory"),
])
def test_a_target_naming_no_run_or_the_working_directory_says_so(target, said):
    proc = snakemake("-n", target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and said in out and "No rule to produce" not in out, out[-3000:]


def test_a_defaults_value_is_checked_even_where_a_narrower_section_overrides_it():
    """config/tiny.yaml's defaults.<model> set every model's epochs, so defaults.train's would never reach a run:
    a bad one is still named, not ignored."""
    from hmm.config import ConfigError
    config = merged_config("config/config.yaml", "config/tiny.yaml")
    assert all("epochs" in config["defaults"][m] for m in ("ff", "lstm", "vlnhmm"))
    config["defaults"]["train"] = {"epochs": 0}
    with pytest.raises(ConfigError, match=r"defaults.train: `epochs` must be a number > 0, got 0"):
        resolve_runs(config)
    config["defaults"]["train"] = {"epochs": 3}
    config["defaults"]["vlnhmm"]["state_dropout"] = 1.5
    with pytest.raises(ConfigError, match=r"defaults.vlnhmm: `state_dropout` must be"):
        resolve_runs(config)


def test_a_run_filling_no_paper_row_is_refused():
    from hmm.config import ConfigError
    from pipeline.config import resolve_run
    for row, hint in (("table1/fff", "KEY one of ff, kn5, lstm, vlnhmm"), ("tabel1/ff", "fig3, fig4, fidelity"),
                      ("table3/awd-lstm", "table3/KEY")):
        with pytest.raises(ConfigError, match=f"run ptb/x: rows: '{row}' is no row .*{hint}"):
            resolve_run({"name": "x", "dataset": "ptb", "model": "ff", "rows": [row]}, {})
    assert resolve_run({"name": "x", "dataset": "ptb", "model": "ff", "rows": ["table1/ff", "fig3"]}, {})


def test_a_cpu_run_of_the_papers_size_says_how_long_it_will_train_before_its_first_job(tmp_path):
    """The CPU profile's runs take hours to days: before any job, a real run says each one's time as far as this
    machine knows (here: its filed run's speed, from the committed reference).  Its data cannot be fetched
    (a refused source), so nothing trains."""
    urls = {split: f"http://127.0.0.1:9/ptb.{split}.txt" for split in ("train", "valid", "test")}  # refused at once
    overlay = tmp_path / "offline.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"ptb": {"sources": [{"kind": "files", "urls": urls}]}}}))
    proc = snakemake("results/runs/ptb/ff/metrics.json", "--cores", "1", "--directory", str(tmp_path / "w"),
                     "--configfile", str(overlay), profile="profiles/cpu", check=False)
    assert proc.returncode != 0 and not (tmp_path / "w/results/runs/ptb/ff/metrics.json").exists()
    filed = json.loads((ROOT / "results/reference/ptb/ff/metrics.json").read_text())
    hours = filed["seconds_per_epoch"] * 100 / 3600
    assert "NOTE: 1 run(s) of the paper's sizes train on this CPU" in proc.stderr, proc.stderr[-3000:]
    assert (f"ptb/ff: about {hours:.1f} h for its 100 epochs at the speed of its filed run ({filed['device_name']}"
            in proc.stderr), proc.stderr[-3000:]
    assert proc.stderr.index("NOTE: 1 run(s)") < proc.stderr.index("Downloading ptb failed")


def test_runs_cut_short_by_their_time_cap_go_on_with_the_command_status_prints(tmp_path):
    """docs/cpu.md: a run stopped by its time cap is complete as far as snakemake knows, so the same command
    again does nothing; the command ``./repro status`` prints (run as printed, through ``./repro run``) trains
    every such run on from its last check: two here, the second of which a forced file alone would miss."""
    overlay = tmp_path / "cap.yaml"
    overlay.write_text(f"mirror: {ROOT / '.test/data'}\ndefaults:\n  ff: {{max_seconds: 0.001}}\n"
                       "  lstm: {max_seconds: 0.001}\n")
    names, work = ("ff", "lstm"), tmp_path / "w"
    targets = [f"results/runs/ptb/{n}/metrics.json" for n in names]
    args = [*targets, "--configfile", str(overlay), "--directory", str(work)]
    snakemake(*args)
    first = {n: json.loads((work / t).read_text()) for n, t in zip(names, targets)}
    for m in first.values():
        assert m["status"].startswith("cut short: time") and m["steps"] < m["steps_per_epoch"] * 2, m["status"]
    same = snakemake(*args)
    assert "Nothing to be done" in same.stdout + same.stderr
    shown = subprocess.run(["./repro", "status", "--profile", "profiles/tiny", "--configfile", str(overlay),
                            "--directory", str(work)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert shown.count("cut short: time") == 2, shown
    (printed,) = [line.strip() for line in shown.splitlines() if line.strip().startswith("./repro run ")]
    words = shlex.split(printed)
    assert set(targets) <= set(words), printed
    proc = subprocess.run(words, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for n, t in zip(names, targets):
        again = json.loads((work / t).read_text())
        history = (work / f"build/checkpoints/ptb/{n}/train.log").read_text()
        assert f"resumed from build/checkpoints/ptb/{n}/ckpt.pt at step {first[n]['steps']:,}" in history, history[-2000:]
        assert again["status"].startswith("cut short: time") and again["steps"] > first[n]["steps"], (n, again["status"])
        assert [s["from_step"] for s in again["segments"]] == [0, first[n]["steps"]]

def test_a_table_is_remade_when_a_run_outside_its_dag_is_filed_or_checks_again(tmp_path):
    """A table reads runs outside its DAG (filed references; results another snakemake trains): a new import, or
    such a run's next check, remakes it; nothing else does."""
    overlay = tmp_path / "no-training.yaml"
    overlay.write_text("gpu_runs: never\ndefaults: {train: {device: cuda}}\n")  # every trained run leaves the DAG
    args = ("results/table1.csv", "--cores", "2", "--directory", str(tmp_path / "w"), "--configfile",
            "config/tiny.yaml", str(overlay))
    proc = snakemake(*args)
    built = job_counts(proc.stdout + proc.stderr)
    assert built.get("table") == 1 and "train" not in built, built
    assert "Nothing to be done" in snakemake("-n", *args).stdout
    record = tmp_path / "w/results/reference/ptb/ff"
    record.mkdir(parents=True)
    (record / "metrics.json").write_text('{"status": "measured"}')  # a run filed since the table was made
    assert job_counts(snakemake("-n", *args).stdout) == {"table": 1}
    snakemake(*args)
    (tmp_path / "w/results/runs/ptb/lstm").mkdir(parents=True)
    (tmp_path / "w/results/runs/ptb/lstm/metrics.json").write_text('{"status": "incomplete"}')  # a check elsewhere
    assert job_counts(snakemake("-n", *args).stdout) == {"table": 1}
