# Shared definitions: the typed run registry (pipeline.config), paths, the GPU switch.
import difflib
import hashlib
import json
import re
import shutil
import subprocess

import yaml
from snakemake.resources import Resource

from hmm.kernels import target_for
from pipeline.data.fetch import OFFLINE
from pipeline.files import write_atomic
from pipeline.config import ConfigError, kernel_states, name_pattern, recipe_overrides, resolve_runs, results_dir
from pipeline.references import filing_roots
from pipeline.training.status import time_to_train
from pipeline.reporting import fidelity

SPLITS = ("train", "valid", "test")
ENV = "../../environment.yml"  # the pinned stack (conda users: --sdm conda)


def repo_path(path):
    """A path of the repository, relative to the working directory (a moved checkout reruns nothing)."""
    return None if path is None else os.path.relpath(ROOT / path)


try:
    RUN_LIST = resolve_runs(config, fidelity.run_entries(config))
    FIDELITY = fidelity.spec(config) if config.get("fidelity") else None
except ConfigError as err:
    raise WorkflowError(f"config: {err}") from None
RUNS = {run.key: run for run in RUN_LIST}
# results/ for the default recipe, results/<recipe>/ for another (config: recipe, recipes)
RESULTS = results_dir(config.get("recipe") or "paper-text")
MIRROR = repo_path(config.get("mirror"))
KENLM_BIN = repo_path(config["kenlm"]["bin_dir"])
# kernels for every live-state count any run needs, and the kernel benchmark's sizes
KERNEL_STATES = kernel_states(RUN_LIST, config["bench"]["kernel_states"])
CUDA_ARCHS = config["kernels"]["cuda_archs"]
# the code that defines and builds the kernels: a change rebuilds them
KERNEL_CODE = [repo_path(f"hmm/kernels/{name}.py") for name in ("definition", "build")]
_GPU = []


def gpu_present():
    """Whether nvidia-smi finds a GPU (asked once, and only where some run needs a GPU)."""
    if not _GPU:
        smi = shutil.which("nvidia-smi")
        _GPU.append(smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0)
    return _GPU[0]


def command_line():
    """The command line snakemake parsed (profile included), or None.

    Snakemake reads the Snakefile before it hands the workflow its executor and settings, so this
    reads them from its own frame, `args_to_api(args, ...)`."""
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != "args_to_api":
        frame = frame.f_back
    return frame and frame.f_locals.get("args")


def command_line_targets():
    """The targets named on the command line, as text."""
    return [str(t) for t in getattr(command_line(), "targets", None) or ()]


def cluster_executor():
    """The executor's name if this snakemake sends its jobs elsewhere (slurm, ...), else None.

    From the command line (`-n` counts as the executor it dry-runs).  check_cluster_before_jobs()
    stops a real run whose executor this missed, should a later snakemake move that frame."""
    name = getattr(command_line(), "executor", None)
    if not name:
        return None
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    return None if ExecutorPluginRegistry().get_plugin(name).common_settings.local_exec else name


CLUSTER = cluster_executor()


def in_dag(run):
    """GPU runs are left out where there is no GPU (gpu_runs: auto) or always (never).
    Under a cluster executor auto means always: the GPUs are on the nodes, not here."""
    mode = config["gpu_runs"]
    return not run.needs_gpu or mode == "always" or (mode == "auto" and (CLUSTER or gpu_present()))


IN_DAG = {key: run for key, run in RUNS.items() if in_dag(run)}
_WHY = "gpu_runs: never" if config["gpu_runs"] == "never" else "gpu_runs: auto and nvidia-smi finds no GPU"
# runs the CPU profile trains at full size (config/cpu.yaml), named as such where this config leaves them out
CPU_PROFILE_RUNS = (
    set()
    if config.get("profile") in ("cpu", "tiny")  # the CPU profile's own; the tiny runs are other, small ones
    else set(yaml.safe_load((ROOT / "config/cpu.yaml").read_text()).get("cpu_runs") or ())
)


def not_run_reason(key):
    if key in CPU_PROFILE_RUNS:
        return (
            f"not run: needs a GPU here ({_WHY}), or a CPU with --profile profiles/cpu (docs/cpu.md); "
            "no run of it is filed yet"
        )
    return f"not run: needs a GPU ({_WHY}); see docs/gpu.md"


NOT_RUN = {key: not_run_reason(key) for key in RUNS if key not in IN_DAG}


def announce_left_out():
    """Every run left out of the DAG, said on stderr by the snakemake a person started (not by each job)."""
    if NOT_RUN and not (workflow.remote_exec or workflow.subprocess_exec):
        if config["gpu_runs"] == "never":
            how = "They need a GPU machine (--profile profiles/gpu) or a cluster (--profile profiles/slurm)"
        elif config.get("profile") == "tiny":  # its runs train on the CPU unless a config asked for a GPU
            how = (
                "The tiny runs train on the CPU unless a config sets `device: cuda` (a --configfile's "
                "`defaults:` or run entry): set `device: cpu` there to train them here, or run on a GPU machine"
            )
        else:
            how = (
                "On this machine, --profile profiles/tiny runs every table small and --profile profiles/cpu "
                "trains the rows a CPU can at full size (docs/cpu.md); the others need a GPU machine "
                "(--profile profiles/gpu) or a cluster (--profile profiles/slurm)"
            )
        print(
            f"WARNING: {len(NOT_RUN)} GPU run(s) left out of the DAG ({_WHY}); their table rows say 'not run' "
            f"(or show a filed reference run). {how}. Left out: {', '.join(NOT_RUN)}",
            file=sys.stderr,
        )


announce_left_out()


def announce_recipe_overrides():
    """Each run setting that differs from the recipe's for that run (the run's own is used), said once."""
    if not (workflow.remote_exec or workflow.subprocess_exec):
        for note in recipe_overrides(config):
            print(f"NOTE: {note}", file=sys.stderr)


announce_recipe_overrides()
TRAINED = {key: run for key, run in IN_DAG.items() if run.train is not None}


def check_gpu_before_jobs(workflow):
    """A job that needs a GPU (asked for by name, or gpu_runs: always) on a machine without one, executing
    locally: stop before any job runs, upstream ones included."""
    if not workflow.local_exec:
        return
    # from the runs themselves: a profile's `resources: gpu=0` scales a job's request down to 0
    need = sorted(
        {
            f"{job.wildcards['dataset']}/{job.wildcards['name']}"
            for job in workflow.dag.needrun_jobs()
            if job.rule.name == "train" and RUNS[f"{job.wildcards['dataset']}/{job.wildcards['name']}"].needs_gpu
        }
    )
    if need and not gpu_present():
        raise WorkflowError(
            f"{len(need)} job(s) need a GPU ({', '.join(need[:4])}{', ...' if len(need) > 4 else ''}; "
            f"gpu_runs: {config['gpu_runs']}) and this machine has no GPU (nvidia-smi finds none); no job was "
            f"started. To go on: {gpu_ways(need)}."
        )


def announce_cpu_training(workflow):
    """Said before the first job: each run of the paper's sizes that this DAG trains on the CPU, and how long it
    will take as far as this machine knows (a checkpoint's last speed, or its filed run's)."""
    if not workflow.local_exec or config.get("profile") == "tiny":
        return
    keys = sorted(
        {
            f"{job.wildcards['dataset']}/{job.wildcards['name']}"
            for job in workflow.dag.needrun_jobs()
            if job.rule.name == "train"
        }
    )
    on_cpu = [RUNS[key] for key in keys if RUNS[key].train.device == "cpu"]
    if on_cpu:
        reference = filing_roots(config, Path.cwd())[0]
        times = "\n".join(f"  {time_to_train(run, Path.cwd(), reference)}" for run in on_cpu)
        print(
            f"NOTE: {len(on_cpu)} run(s) of the paper's sizes train on this CPU (hours to days each on a small "
            f"machine; docs/cpu.md), each from its last check where it has one:\n{times}",
            file=sys.stderr,
        )


def gpu_ways(need):
    """The ways forward for runs ``need`` that need a GPU on a machine without one."""
    ways = ["run them on a GPU machine or cluster (profiles/gpu, profiles/slurm)"]
    if config.get("profile") != "tiny":
        ways.append("use the tiny profile (--profile profiles/tiny)")
    if CPU_PROFILE_RUNS and set(need) <= CPU_PROFILE_RUNS:
        ways.append("train them on this CPU at full size (--profile profiles/cpu; docs/cpu.md)")
    ways += ["set `device: cpu` for a run in the config"]
    if config["gpu_runs"] == "always":
        ways.append("set gpu_runs: auto to leave them out")
    return "; ".join(ways)


def check_targets():
    """A target under the working directory's own name (tiny/results/...) or naming no run of this config: one
    line that says so, before snakemake's 'No rule to produce'."""
    if workflow.remote_exec or workflow.subprocess_exec:
        return
    here = Path.cwd()
    for target in command_line_targets():
        if here != ROOT and target.startswith(f"{here.name}/") and not Path(target).exists():
            raise WorkflowError(
                f"target {target}: targets are relative to snakemake's working directory ({here}, the profile's "
                f"`directory:` or --directory): drop the leading {here.name}/"
            )
        named = re.match(rf"{re.escape(RESULTS)}/runs/([^/]+)/([^/]+)/", target)
        if named and f"{named[1]}/{named[2]}" not in RUNS:
            key = f"{named[1]}/{named[2]}"
            close = difflib.get_close_matches(key, RUNS, n=3, cutoff=0.8)
            raise WorkflowError(
                f"target {target}: this config has no run {key}"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + "; `./repro status --all` (with this command's --profile) lists its runs"
            )


check_targets()


def warn_gpu_in_dry_run():
    """A dry run never reaches onstart's check_gpu_before_jobs: say beforehand that a real run would stop."""
    if not getattr(command_line(), "dryrun", False) or CLUSTER or workflow.remote_exec or workflow.subprocess_exec:
        return
    targets = command_line_targets()
    need = [  # in the DAG, or asked for by name
        key
        for key, run in RUNS.items()
        if run.needs_gpu and (key in IN_DAG or any(t.startswith(f"{run.out_dir}/") for t in targets))
    ]
    if need and not gpu_present():
        print(
            f"WARNING: {len(need)} GPU run(s) are in this DAG (gpu_runs: {config['gpu_runs']}) and this machine has "
            f"no GPU (nvidia-smi finds none): a real run whose jobs include their training stops before its first "
            f"job. To go on: {gpu_ways(need)}.",
            file=sys.stderr,
        )


warn_gpu_in_dry_run()


DEFAULTS_CHOSEN = []


def default_local_resources(workflow):
    """A plain `snakemake TARGET` (no --cores, no --resources gpu=N) runs locally on all cores of this
    machine with one GPU job at a time: the settings of `./repro run`.  Given ones are kept.  A cluster
    run (CLUSTER; it also has --jobs, which snakemake requires there) gets neither: its jobs are sized
    per rule (cluster.smk)."""
    settings = workflow.resource_settings
    if CLUSTER or settings.nodes is not None or not workflow.is_main_process:
        return
    if settings.cores is None:
        settings.cores = os.cpu_count() or 1
        workflow.global_resources["_cores"] = Resource("_cores", settings.cores)
        DEFAULTS_CHOSEN.append(f"--cores {settings.cores} (all of this machine's)")
    if "gpu" not in workflow.global_resources:
        workflow.register_resource("gpu", 1)
        DEFAULTS_CHOSEN.append("--resources gpu=1 (GPU jobs one at a time)")


def announce_defaults():
    """Said when jobs start (not in a dry run): what a plain run was given by default_local_resources."""
    if DEFAULTS_CHOSEN:
        print(f"[repro] not given on the command line: {'; '.join(DEFAULTS_CHOSEN)}", file=sys.stderr)


# ---- cluster jobs: partition and size of each kind of job (config slurm:, docs/slurm.md)
SLURM = config["slurm"]


def job_kind(kind):
    """A kind of job (a key of slurm.jobs) as a function of wildcards: a name, or already a function."""
    return kind if callable(kind) else lambda wc: kind


def job_threads(kind):
    """The job's threads: its cpus (the plugin asks --cpus-per-task for them; OMP_NUM_THREADS follows)."""
    return lambda wc: SLURM["jobs"][job_kind(kind)(wc)]["cpus"]


def job_resources(kind):
    """The job's partition (GPU kinds end in _gpu), memory, runtime and account, as rule resources."""
    of = job_kind(kind)
    account = {"slurm_account": SLURM["account"]} if SLURM["account"] else {}
    return {
        "slurm_partition": lambda wc: SLURM["gpu_partition" if of(wc).endswith("_gpu") else "cpu_partition"],
        "mem_mb": lambda wc: SLURM["jobs"][of(wc)]["mem_mb"],
        "runtime": lambda wc: SLURM["jobs"][of(wc)]["runtime"],
    } | account


def train_kind(wc):
    return "train_gpu" if the_run(wc).needs_gpu else "train_cpu"


def bench_kind(wc):
    return "bench_gpu" if wc.device == "cuda" else "bench_cpu"


def raw_files(dataset):
    return {s: f"data/raw/{spec['file']}" for s, spec in config["datasets"][dataset]["splits"].items()}


def dataset_spec(wc):
    return json.dumps(config["datasets"][wc.dataset], sort_keys=True)


def full_size_hashes():
    """The pinned sha256 of every full-size data file (config/config.yaml)."""
    datasets = yaml.safe_load((ROOT / "config/config.yaml").read_text())["datasets"]
    return {f["sha256"] for d in datasets.values() for f in d.get("splits", {}).values()}


def explain_failed_download(logs):
    """After a failed workflow whose download failed (snakemake's ``logs`` say which): what to do, as the last
    lines a person sees."""
    text = "".join(Path(f).read_text() for f in ([logs] if isinstance(logs, str) else logs or []) if Path(f).is_file())
    failed = sorted(set(re.findall(r"Error in rule download_(\w+)", text)))
    if not failed:
        return
    fetch_logs = [f"logs/download/{name}.log" for name in failed]
    said = "".join(Path(f).read_text() for f in fetch_logs if Path(f).is_file())
    if MIRROR:  # the files came from the user's mirror: what failed there, and how to mend it
        # each error with its indented lines (a checksum mismatch: the expected and actual sha256)
        errors = re.findall(r"^\[fetch\] ERROR: (.*\n(?:  .*\n)*)", f"{said}\n", re.M)
        tiny = config.get("profile") == "tiny"
        if tiny and set(re.findall(r"actual +sha256 (\w+)", said)) & full_size_hashes():
            mend = (
                "The tiny profile reads its own slices of the data, kept in the clone (.test/data; their sha256 in "
                "config/tiny.yaml), and this mirror holds the full files: drop `--config mirror=...` (and any "
                "`mirror:` of a --configfile) from this tiny run."
            )
        elif tiny and Path(MIRROR).resolve() == (ROOT / ".test/data").resolve():
            mend = "The clone's own tiny data (.test/data) is damaged: `git checkout .test/data` restores it."
        else:
            mend = (
                "Replace that file in the mirror by a good copy (its sha256: `datasets:` in "
                f"config/{'tiny' if tiny else 'config'}.yaml), or leave `mirror` out to "
                + ("use the clone's own tiny data." if tiny else "download from the canonical sources.")
            )
        print(
            f"\nCopying {' and '.join(failed)} from the mirror {Path(MIRROR).resolve()} failed:\n  "
            + "\n  ".join(e.rstrip("\n").replace("\n", "\n  ") for e in errors or [f"see {', '.join(fetch_logs)}"])
            + f"\n{mend}",
            file=sys.stderr,
        )
        return
    why = "no source could be reached (no network?)" if "no source could be reached" in said else "every source failed"
    print(
        f"\nDownloading {' and '.join(failed)} failed: {why}; each source's error: {', '.join(fetch_logs)}.\n"
        f"{OFFLINE}",
        file=sys.stderr,
    )


def write_spec(spec, path, log):
    """A dataset's spec (JSON text) into ``path``, readable; ``log`` says so."""
    write_atomic(path, f"{json.dumps(json.loads(spec), indent=1, sort_keys=True)}\n")
    Path(log).write_text(f"wrote {path}\n")


def the_run(wc):
    return RUNS[f"{wc.dataset}/{wc.name}"]


def spec_of(wc):
    return json.dumps(the_run(wc).result_spec(), sort_keys=True)


def runs_for(name):
    """Runs that fill rows of table/figure ``name``."""
    return [r for r in RUN_LIST if any(row == name or row.startswith(f"{name}/") for row in r.rows)]


# the code a table is made by: a change to any of it remakes the tables
TABLE_CODE = sorted(
    repo_path(p.relative_to(ROOT))
    for p in [ROOT / "pipeline/intervals.py", *(ROOT / "pipeline/reporting").glob("*.py")]
)


def table_inputs(wc):
    """A table's runs' metrics, the paper's numbers, the full config (the paper's settings per row), the code."""
    runs = runs_for(wc.name)
    return {
        "metrics": [f"{r.out_dir}/metrics.json" for r in runs if r.key in IN_DAG],
        "paper": repo_path("config/paper.yaml"),
        "paper_config": repo_path("config/config.yaml"),
        "code": TABLE_CODE,
        "stats": sorted({f"data/{r.dataset}/stats.json" for r in runs}),  # vocabulary sizes (a uniform model's ppl)
    }


def table_reads(wc):
    """A digest of what a table reads of its runs outside this DAG (their own results, trained by another
    snakemake, and their filed reference runs): a param, so that an import, such a run's next check or an edited
    record remakes the table.  Not inputs: a run another snakemake is training is an incomplete file here."""
    reference = Path(filing_roots(config, Path.cwd())[0])
    digest = hashlib.sha256()
    for r in runs_for(wc.name):
        for path in (Path(r.out_dir), reference / r.filed_as) if r.key not in IN_DAG else ():
            for name in ("metrics.json", "SHA256SUMS"):
                if (path / name).is_file():
                    digest.update(f"{path / name}\0".encode() + (path / name).read_bytes())
    return digest.hexdigest()


# ---- the report (snakemake --report): items, labels, the front page as its landing page
ITEMS = ("table1", "table2", "table3", "table4", "fig3", "fig4")
PROFILE = config.get("profile") or "full"
LABEL = config.get("label") or ""
SCALE = json.dumps(config.get("scale") or {}, sort_keys=True)
FRONT_PAGE = f"{RESULTS}/frontpage.rst"
with open(ROOT / "config/paper.yaml") as _f:
    PAPER_TITLES = {name: item["caption"] for name, item in yaml.safe_load(_f).items() if name in ITEMS}
# Training curves are plotted by the training jobs; they inherit this context (the profile label, the paper rows
# each run fills) from the environment, so that neither is a param that would retrain a run (pipeline.training.curves).
os.environ.update(REPRO_CURVE_CONTEXT=json.dumps({"label": LABEL, "rows": {r.key: list(r.rows) for r in RUN_LIST}}))


def report_category(wc):
    return "Tables" if wc.name.startswith("table") else "Figures"


def report_labels(form):
    """Labels of a table's / figure's report item: which one (``Table 1``) and in which form."""
    return lambda wc: {"item": PAPER_TITLES[wc.name].split(":")[0], "form": form}


def report_description():
    """The report's landing page: the front page the pipeline wrote (an absolute path: the working
    directory, e.g. tiny/, is not the Snakefile's), or a note to run the pipeline first."""
    page = Path(FRONT_PAGE).resolve()
    if not page.is_file():
        return str(ROOT / "workflow/report/workflow.rst")
    tables = [Path(f"{RESULTS}/{name}.csv") for name in ITEMS]
    newer = [t.stem for t in tables if t.is_file() and t.stat().st_mtime > page.stat().st_mtime]
    if newer and "--report" in " ".join(sys.argv):
        print(f"warning: {FRONT_PAGE} is older than {', '.join(newer)}: run `all` first", file=sys.stderr)
    return str(page)


def announce_report():
    """`snakemake --report [PATH]` writes PATH relative to the working directory: say where, once."""
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == "--report" or arg.startswith("--report="):
            given = arg.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "")
            path = given if given.endswith((".html", ".zip")) else "report.html"
            print(f"Report: {os.path.abspath(path)}", file=sys.stderr)


announce_report()


def paths_file(wc):
    """The paths file behind data/{dataset}/clusters/{source}-{M}.tsv: a run's cluster_paths, or the download."""
    tsv = f"data/{wc.dataset}/clusters/{wc.source}-{wc.num_clusters}.tsv"
    local = [
        r.settings.cluster_paths for r in RUN_LIST if r.inputs().get("clusters") == tsv and r.settings.cluster_paths
    ]
    if local:
        return local[0] if os.path.isabs(local[0]) else repo_path(local[0])
    if wc.source != "authors":
        raise WorkflowError(f"no run reads {tsv}")
    return f"data/{wc.dataset}/clusters/authors-{wc.num_clusters}.paths"


def kernel_manifest(wc):
    return f"build/kernels/{target_for(wc.device)}/manifest.json"


wildcard_constraints:
    dataset="|".join(config["datasets"]),
