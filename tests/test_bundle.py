"""The GPU node path rehearsed on the CPU: bundle -> node -> import -> tables.

``./repro bundle`` makes a tiny bundle with llvm kernels; ``pipeline.node --device cpu`` runs it
in a Python that can import only the repository, the bundle, torch and numpy
(tests/node_sandbox: no full TVM, snakemake, yaml, pandas, matplotlib or tqdm on its path), with a
budget that cuts one run short; ``./repro import`` files the runs; the tables show them as
``reference`` rows, the cut-short one saying so.  About 80 s on 2 cores.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import merged_config
from pipeline.node.bundle import load_config, node_plan
from pipeline.config import ConfigError, resolve_runs
from pipeline.node.schedule import throughput
from pipeline.node.settings import NodeConfig, node_settings

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "tests/node_sandbox"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
FORBIDDEN = ("snakemake", "yaml", "pandas", "matplotlib", "tqdm")
# Over the tiny profile: one run that finishes (ff, 1 epoch, over two seeds: ff and ff@2222) and one the
# budget must cut short (a 512-state VLNHMM for 1000 epochs: far more than any machine trains in the budget),
# all in table rows (budget 60 s: three runs).
OVERLAY = """
runs:
  - {name: ff, dataset: ptb, model: ff, epochs: 1, seeds: [1111, 2222], rows: [table1/ff]}
  - {name: vlnhmm-512, dataset: ptb, model: vlnhmm, num_states: 512, epochs: 1000, rows: [table2/vlnhmm]}
priority: [ptb/vlnhmm-512, ptb/ff]
node: {check_runs: [ptb/vlnhmm-512], budget: 60, margin: 3, env_cap: 15, check_cap: 20, bench_kernels_cap: 5,
       bench_scale_cap: 6, solo_seconds: 8, warm_seconds: 1, run_reserve: 3, min_run_seconds: 4, parallel: 3}
bench: {kernel_states: [16, 32], scale_states: {cpu: [64]}, scale_steps: 1}
"""
pytestmark = pytest.mark.pipeline


def py(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dependency_farm(dest: Path, roots=("torch", "numpy", "triton")) -> set[str]:
    """A folder of links to torch, numpy and their own (non-optional) dependencies; their top-level names."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(key)
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in dist.requires or [] if "extra ==" not in r]
    dest.mkdir(parents=True)
    names = set()
    for key in sorted(seen):
        dist = md.distribution(key)
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or []}:
            if top.startswith("..") or top == "__pycache__" or top.endswith(".pth") or not (base / top).exists():
                continue
            if not (dest / top).exists():
                (dest / top).symlink_to(base / top)
            if not top.endswith((".dist-info", ".data")):
                names.add(top.split(".")[0])
    return names


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    overlay = tmp / "rehearsal.yaml"
    overlay.write_text(OVERLAY)
    configs = ["--profile", "profiles/tiny", "--configfile", "config/tiny.yaml", str(overlay)]
    bundle, out = tmp / "bundle", tmp / "out"
    made = py("-m", "pipeline.node.bundle", "--out", str(bundle), *configs, "--target", "llvm", "--python", PY,
              "--directory", str(tmp / "work"), "--datasets", "ptb")
    farm = tmp / "site"
    names = dependency_farm(farm) | {"hmm", "pipeline", "baselines", "bench", "tvm", "tvm_ffi", "ml_dtypes"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=f"{SANDBOX}{os.pathsep}{farm}", NODE_SANDBOX_NAMES=",".join(sorted(names)),
               NODE_SANDBOX_PATHS=os.pathsep.join(map(str, (ROOT, bundle, farm, SANDBOX))),
               NODE_SANDBOX_LOG=str(tmp / "sandbox.log"))
    probes = {m: py("-c", f"import {m}", env=env, check=False).returncode for m in (*FORBIDDEN, "torch", "numpy")}
    node = py("-m", "pipeline.node", "--bundle", str(bundle), "--out", str(out), "--device", "cpu",
              "--work", str(tmp / "node-work"), env=env)
    imported = py("-m", "pipeline.node.importer", str(out), *configs, "--reference", str(tmp / "reference"),
                  "--bench-dir", str(tmp / "bench"))
    config = load_config("profiles/tiny", ["config/tiny.yaml", str(overlay)])
    tables = {}
    for name in ("table1", "table2"):
        py("-m", "pipeline.reporting.report", "table", "--name", name, "--paper", "config/paper.yaml", "--runs",
           json.dumps([r.to_dict() for r in resolve_runs(config)]), "--runs-dir", str(tmp / "no-local-runs"),
           "--reference", str(tmp / "reference"), "--csv", str(tmp / f"{name}.csv"), "--png", str(tmp / f"{name}.png"))
        tables[name] = pd.read_csv(tmp / f"{name}.csv")
    return {"tmp": tmp, "bundle": bundle, "out": out, "overlay": overlay, "configs": configs, "made": made, "env": env,
            "node": node, "imported": imported, "tables": tables, "probes": probes,
            "summary": json.loads((out / "summary.json").read_text()),
            "sandbox": (tmp / "sandbox.log").read_text().splitlines()}


def test_bundle_holds_what_the_node_needs(rehearsal):
    b = rehearsal["bundle"]
    manifest = json.loads((b / "BUNDLE.json").read_text())
    assert manifest["runs"] == ["ptb/ff", "ptb/ff@2222", "ptb/vlnhmm-512"]
    assert manifest["priority"] == ["ptb/vlnhmm-512", "ptb/ff", "ptb/ff@2222"]  # seed repeats after the list
    assert manifest["kernel_states"] == [4, 8, 16, 32]  # the run's k' and k, the benchmarks' sizes
    assert json.loads((b / "kernels/llvm/manifest.json").read_text())["states"] == [4, 8, 16, 32]
    assert (b / "tvm-runtime/tvm").is_dir() and not (b / "tvm-runtime/tvm/lib/libtvm_compiler.so").exists()
    assert (b / "data/ptb/clusters/brown-16.tsv").read_text().startswith("word\tcluster\n")
    assert manifest["commit"] and "dirty" in manifest and manifest["python"] == PY
    assert re.search(r"MiB of 60 MiB", rehearsal["made"].stdout)


def test_node_sees_only_repository_bundle_torch_numpy(rehearsal):
    assert {m: rc for m, rc in rehearsal["probes"].items() if rc} == {m: 1 for m in FORBIDDEN}
    env = rehearsal["summary"]["env"]
    assert env["tvm_from_bundle"] and env["tvm_runtime_only"], env
    loaded = [line for line in rehearsal["sandbox"] if line.startswith("loaded ")]
    assert loaded and not [line for line in loaded if set(line.split()[1].split(",")) & set(FORBIDDEN)]
    refused = {line.split()[1] for line in rehearsal["sandbox"] if line.startswith("refused ")}
    # pipeline.training.progress tried tqdm and the end of a run matplotlib: refused, and the runs went on
    assert {"tqdm", "matplotlib"} <= refused, refused


def test_node_runs_every_phase_within_budget(rehearsal):
    s, out = rehearsal["summary"], rehearsal["out"]
    assert s["elapsed_s"] <= 60
    assert s["phases"]["env"]["status"] == "ok" and s["phases"]["check"]["status"] == "passed"
    assert s["backend"]["runs"] == "tvm"
    check = json.loads((out / "check.json").read_text())
    assert check["verdict"]["backend"] == "tvm" and {r["what"] for r in check["model"]} == {
        "potentials (training)", "potentials (evaluation)", "training step"}
    assert {r["n"] for r in check["kernels"]["rows"]} == {4, 8, 16, 32}
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).is_file() and (out / f).stat().st_size <= 16 * 2**20 for f in files)
    assert {"summary.json", "check.json", "runs.tgz", "kernel_cpu.csv", "node.log"} <= set(files), files
    assert s["runs"]["ptb/ff"]["status"] == "measured" and s["runs"]["ptb/ff@2222"]["status"] == "measured"
    assert s["runs"]["ptb/vlnhmm-512"]["status"].startswith("cut short: time"), s["runs"]["ptb/vlnhmm-512"]
    assert s["throughput"]["verdict"]
    with tarfile.open(out / "runs.tgz") as tar:
        names = set(tar.getnames())
    assert {"runs/ptb/ff/metrics.json", "runs/ptb/ff/docs.npz", "runs/ptb/ff@2222/metrics.json",
            "runs/ptb/vlnhmm-512/curve.csv", "logs/check.log"} <= names


def test_import_files_runs_with_provenance_and_tables_show_them(rehearsal):
    ref = rehearsal["tmp"] / "reference"
    cut = json.loads((ref / "ptb/vlnhmm-512/metrics.json").read_text())
    prov = cut["provenance"]
    assert cut["status"].startswith("cut short: time") and cut["spec"]["train"]["max_seconds"]
    assert prov["commit"] not in (None, "unknown") and prov["backend"] == "tvm" and prov["epochs"] < 1000
    for key in ("gpu", "driver", "torch", "date", "wall_seconds", "matmul_precision", "device_name"):
        assert key in prov
    assert (ref / "ptb/ff/curve.csv").is_file() and (ref / "ptb/ff/train.log").is_file()
    assert (rehearsal["tmp"] / "bench/kernel_cpu.csv").is_file()
    t1, t2 = rehearsal["tables"]["table1"], rehearsal["tables"]["table2"]
    ff = t1[t1["run"] == "ptb/ff"].iloc[0]
    assert ff["status"].startswith("reference") and "measured" in ff["status"] and ff["valid_ppl"] > 0
    assert ff["n"] == 2 and ff["seeds"] == "1111, 2222" and ff["test_lo"] < ff["test_ppl"] < ff["test_hi"]
    assert (ref / "ptb/ff@2222/docs.npz").is_file()
    hmm = t2[t2["run"] == "ptb/vlnhmm-512"].iloc[0]
    assert hmm["status"].startswith("reference") and "cut short" in hmm["status"], hmm["status"]


def test_import_refuses_a_run_whose_setting_changed(rehearsal, tmp_path):
    changed = tmp_path / "changed.yaml"
    changed.write_text(rehearsal["overlay"].read_text() + "defaults: {ff: {hidden: 32}}\n")
    proc = py("-m", "pipeline.node.importer", str(rehearsal["out"]), "--profile", "profiles/tiny", "--configfile",
              "config/tiny.yaml", str(changed), "--reference", str(tmp_path / "ref"), "--bench-dir",
              str(tmp_path / "bench"), check=False)
    assert proc.returncode == 1
    assert "REFUSED ptb/ff: its spec differs from today's config in `hidden` (`hidden` trained 64, config now 32)" \
        in proc.stderr, proc.stderr
    assert not (tmp_path / "ref/ptb/ff").exists() and (tmp_path / "ref/ptb/vlnhmm-512/metrics.json").is_file()


def repack(out: Path, dest: Path, edit) -> Path:
    """A copy of the node's OUT whose runs.tgz went through ``edit(folder)``."""
    import shutil
    shutil.copytree(out, dest)
    unpacked = dest / "unpacked"
    with tarfile.open(dest / "runs.tgz") as tar:
        tar.extractall(unpacked, filter="data")
    edit(unpacked)
    with tarfile.open(dest / "runs.tgz", "w:gz") as tar:
        for path in sorted(unpacked.rglob("*")):
            if path.is_file():
                tar.add(path, str(path.relative_to(unpacked)))
    shutil.rmtree(unpacked)
    return dest


def test_import_refuses_an_archive_edited_after_the_node_job(rehearsal, tmp_path):
    def edit(folder):
        path = folder / "runs/ptb/ff/metrics.json"
        m = json.loads(path.read_text())
        path.write_text(json.dumps(m | {"valid_ppl": m["valid_ppl"] - 1.0}, indent=2) + "\n")
    out = repack(rehearsal["out"], tmp_path / "out", edit)
    proc = py("-m", "pipeline.node.importer", str(out), *rehearsal["configs"], "--reference", str(tmp_path / "ref"),
              "--bench-dir", str(tmp_path / "bench"), check=False)
    assert proc.returncode == 1
    assert re.search(r"REFUSED ptb/ff: runs/ptb/ff/metrics.json in runs.tgz does not match the node's record in "
                     r"summary.json \(expected \w+, actual \w+\): the archive was changed after the node job",
                     proc.stderr), proc.stderr
    assert not (tmp_path / "ref/ptb/ff").exists() and (tmp_path / "ref/ptb/vlnhmm-512/SHA256SUMS").is_file()


def test_import_keeping_every_run_still_files_the_benchmarks(rehearsal, tmp_path):
    """Every run of the job kept (a measured reference stays over a cut-short one): the job's benchmark CSVs and
    session record are filed all the same; nothing was wrong with them."""
    import shutil
    out = repack(rehearsal["out"], tmp_path / "out", lambda folder: [shutil.rmtree(folder / "runs/ptb" / name)
                                                                      for name in ("ff", "ff@2222")])
    ref = tmp_path / "ref"
    shutil.copytree(rehearsal["tmp"] / "reference/ptb/vlnhmm-512", ref / "ptb/vlnhmm-512")
    measured = ref / "ptb/vlnhmm-512/metrics.json"
    measured.write_text(json.dumps(json.loads(measured.read_text()) | {"status": "measured"}))
    before = measured.read_text()
    proc = py("-m", "pipeline.node.importer", str(out), *rehearsal["configs"], "--reference", str(ref),
              "--bench-dir", str(tmp_path / "bench"))
    assert "kept ptb/vlnhmm-512: kept the measured reference" in proc.stdout, proc.stdout
    assert measured.read_text() == before and (tmp_path / "bench/kernel_cpu.csv").is_file()
    assert list((ref / "_sessions").glob("*/summary.json")), proc.stdout


def test_table_blanks_a_reference_run_edited_after_import(rehearsal, tmp_path):
    import shutil
    ref = tmp_path / "reference"
    shutil.copytree(rehearsal["tmp"] / "reference", ref)
    path = ref / "ptb/ff/metrics.json"
    path.write_text(path.read_text().replace('"valid_ppl": ', '"valid_ppl": 1', 1))
    config = load_config("profiles/tiny", ["config/tiny.yaml", str(rehearsal["overlay"])])
    py("-m", "pipeline.reporting.report", "table", "--name", "table1", "--paper", "config/paper.yaml", "--runs",
       json.dumps([r.to_dict() for r in resolve_runs(config)]), "--runs-dir", str(tmp_path / "none"),
       "--reference", str(ref), "--csv", str(tmp_path / "t1.csv"), "--png", str(tmp_path / "t1.png"))
    row = pd.read_csv(tmp_path / "t1.csv").set_index("run").loc["ptb/ff"]
    assert row["status"].startswith("modified after import: ") and "metrics.json does not match" in row["status"]
    assert pd.isna(row["valid_ppl"]) and pd.isna(row["test_ppl"])


def test_node_killed_loses_no_finished_run_and_leaves_no_child(rehearsal, tmp_path):
    """kill -9 of the node right after a run finished: OUT already holds that run, and no child lives on."""
    import signal
    import time
    out, work = tmp_path / "out", tmp_path / "work"
    node = subprocess.Popen([sys.executable, "-m", "pipeline.node", "--bundle", str(rehearsal["bundle"]), "--out",
                             str(out), "--device", "cpu", "--work", str(work), "--skip", "check", "bench",
                             "--runs", "ptb/ff", "ptb/vlnhmm-512", "--budget", "60"],
                            cwd=ROOT, env=rehearsal["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = work / "logs/node.log", time.monotonic() + 120
    while time.monotonic() < deadline and "run ptb/ff: measured" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    node.send_signal(signal.SIGKILL)
    node.wait()
    assert "run ptb/ff: measured" in log.read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["ptb/ff"]["status"] == "measured"
    with tarfile.open(out / "runs.tgz") as tar:
        assert "runs/ptb/ff/metrics.json" in tar.getnames()
    time.sleep(1.0)
    alive = subprocess.run(["pgrep", "-f", f"pipeline.training.train .*{work}"], capture_output=True, text=True).stdout.split()
    assert alive == [], f"trainers outlived the node: {alive}"


def test_node_returns_its_environment_whatever_the_budget(rehearsal, tmp_path):
    out = tmp_path / "out"
    py("-m", "pipeline.node", "--bundle", str(rehearsal["bundle"]), "--out", str(out), "--device", "cpu",
       "--work", str(tmp_path / "work"), "--budget", "2", env=rehearsal["env"])  # below the margin
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"]["env"]["status"] == "ok" and summary["env"]["torch"]


# ------------------------------------------------------------------ fast checks (no rehearsal)
def fake_out(out: Path, metrics: dict[str, dict]) -> Path:
    """A node job's OUT holding ``metrics`` (run key -> metrics.json) in runs.tgz, recorded in summary.json as
    the node records them, and a bench CSV."""
    import hashlib
    import io
    out.mkdir(parents=True)
    digests = {}
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        for key, m in metrics.items():
            data = json.dumps(m).encode()
            info = tarfile.TarInfo(f"runs/{key}/metrics.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            digests[info.name] = hashlib.sha256(data).hexdigest()
    (out / "summary.json").write_text(json.dumps({"started": "2026-12-01T10:00:00", "device": "cpu",
                                                 "archive_sha256": digests}))
    (out / "kernel_cpu.csv").write_text("n,ms\n16,1.0\n")
    return out


def test_an_import_that_files_no_run_writes_nothing(tmp_path):
    """All runs refused (the bundle's profile not given): no reference run, bench CSV or session record; exit 1."""
    from pipeline.node.importer import main as import_main
    tiny = {r.key: r for r in resolve_runs(load_config("profiles/tiny", None, None))}
    out = fake_out(tmp_path / "out", {"ptb/ff": {"status": "measured", "spec": tiny["ptb/ff"].result_spec()}})
    ref, bench = tmp_path / "ref", tmp_path / "bench"
    assert import_main([str(out), "--reference", str(ref), "--bench-dir", str(bench)]) == 1  # full config: refused
    assert not ref.exists() and not bench.exists()


def test_a_partial_import_writes_only_what_it_filed(tmp_path):
    from pipeline.node.importer import main as import_main
    tiny = {r.key: r for r in resolve_runs(load_config("profiles/tiny", None, None))}
    changed = tiny["ptb/lstm"].result_spec()
    changed["settings"] = changed["settings"] | {"hidden": 7}
    out = fake_out(tmp_path / "out", {"ptb/ff": {"status": "measured", "spec": tiny["ptb/ff"].result_spec()},
                                      "ptb/lstm": {"status": "measured", "spec": changed}})
    ref, bench = tmp_path / "ref", tmp_path / "bench"
    assert import_main([str(out), "--profile", "profiles/tiny", "--reference", str(ref),
                        "--bench-dir", str(bench)]) == 1  # one refused
    assert sorted(p.name for p in (ref / "ptb").iterdir()) == ["ff"]
    assert (ref / "ptb/ff/SHA256SUMS").is_file() and (bench / "kernel_cpu.csv").is_file()
    assert (ref / "_sessions/20261201T100000-cpu/summary.json").is_file()


def test_config_merge_matches_snakemake_order():
    assert load_config("profiles/tiny") == merged_config("config/config.yaml", "config/tiny.yaml") | {"profile": "tiny"}
    full = load_config(None, None, ["mirror=../shared/data"])
    assert full["mirror"] == "../shared/data" and full["runs"] == merged_config("config/config.yaml")["runs"]


def test_full_plan_builds_kernels_from_the_runs():
    plan = node_plan(load_config(), ["ptb", "wt2"], "cuda", reference=None)
    # 1024/128 -> 8, k'=4; 1024 dense; 96 / 192: 128 / 256 states per block at state dropout 0.25
    assert plan["kernel_states"] == [4, 8, 16, 32, 64, 96, 128, 192, 256, 512, 1024]
    assert plan["dropped_states"] == [2048]   # bench.scale at 2^18 / 128: the PyTorch scan there
    assert ("ptb", 4) in plan["clusters"] and ("wt2", 128) in plan["clusters"]
    assert plan["priority"][:3] == ["ptb/ff", "ptb/lstm", "ptb/vlnhmm-32768"]
    assert node_plan(load_config(), ["ptb"], "cuda")["check_runs"] == ["ptb/vlnhmm-16384", "ptb/vlnhmm-32768"]


def test_a_run_with_a_measured_reference_leaves_the_node_priority(tmp_path):
    """A node job is minutes: a run already measured (filed with today's settings) is not trained again there;
    one cut short, or filed with other settings, is."""
    config = load_config()
    runs = {r.key: r for r in resolve_runs(config)}

    def filed(key: str, status: str, spec: dict | None = None) -> None:
        dest = tmp_path / runs[key].filed_as
        dest.mkdir(parents=True)
        (dest / "metrics.json").write_text(json.dumps({"status": status, "spec": spec or runs[key].result_spec()}))

    filed("ptb/ff", "measured")
    filed("ptb/lstm", "cut short: time, max_seconds 200 (3.10 of 50 epochs)")
    other = runs["ptb/vlnhmm-32768"].result_spec()
    filed("ptb/vlnhmm-32768", "measured", other | {"train": other["train"] | {"lr": 0.5}})
    plan = node_plan(config, ["ptb"], "cuda", reference=tmp_path)
    assert plan["measured"] == ["ptb/ff"]
    assert plan["priority"][:3] == ["ptb/lstm", "ptb/vlnhmm-32768", "ptb/vlnhmm-16384"]
    assert "ptb/ff" in [r.key for r in plan["runs"]]  # still bundled: the node's --runs trains it
    committed = node_plan(config, ["ptb", "wt2"], "cuda")  # today's committed references
    assert {"ptb/ff", "ptb/lstm"} <= set(committed["measured"]) and committed["priority"][0] == "ptb/vlnhmm-32768"


def test_bad_node_settings_are_named():
    with pytest.raises(ConfigError, match="node: `parallel` must be an integer >= 1, got 0"):
        node_settings({"parallel": 0})
    with pytest.raises(ConfigError, match=r"node: unknown setting\(s\) budgt"):
        node_settings({"budgt": 3})
    config = merged_config("config/config.yaml") | {"priority": ["ptb/kn5"]}
    with pytest.raises(ConfigError, match="priority: ptb/kn5 is a kn5 run, not a trained one"):
        node_plan(config, None, "cuda")
    assert NodeConfig().budget == 540


def test_throughput_record_compares_alone_and_together():
    rows = [{"tokens_per_s": 100, "active_min": 1, "active_max": 1}] * 3 + \
           [{"tokens_per_s": 70, "active_min": 3, "active_max": 3}] * 2
    tp = throughput({"ptb/ff": {"curve": rows}})
    assert tp["per_run"]["ptb/ff"]["tokens_per_s_by_runs_going"] == {1: 100, 3: 70}
    assert tp["estimate"]["total_gain_if_all_slow_alike"] == 2.1 and "raises" in tp["verdict"]


def test_provenance_without_git_reads_repro_commit(monkeypatch):
    import pipeline.provenance as p

    monkeypatch.setattr(p, "git_commit", lambda: None)
    monkeypatch.setenv("REPRO_COMMIT", "0123456789-dirty")
    assert p.provenance()["commit"] == "0123456789-dirty" and p.provenance()["commit_source"] == "REPRO_COMMIT"
    monkeypatch.delenv("REPRO_COMMIT")
    assert p.commit() == ("unknown", "none")
