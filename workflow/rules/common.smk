# Shared definitions: the typed run registry (pipeline.config), paths, the GPU switch.
import json
import shutil
import subprocess

import yaml

from hmm.kernels import target_for
from pipeline.config import ConfigError, kernel_states, name_pattern, resolve_runs, results_dir
from pipeline import fidelity

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


def in_dag(run):
    """GPU runs are left out where there is no GPU (gpu_runs: auto) or always (never)."""
    mode = config["gpu_runs"]
    return not run.needs_gpu or mode == "always" or (mode == "auto" and gpu_present())


IN_DAG = {key: run for key, run in RUNS.items() if in_dag(run)}
NOT_RUN = {
    key: "not run: needs a GPU and none was found (gpu_runs: auto); see README, Running on a GPU"
    for key in RUNS
    if key not in IN_DAG
}
TRAINED = {key: run for key, run in IN_DAG.items() if run.train is not None}


def check_gpu_before_jobs(workflow):
    """gpu_runs: always on a machine without a GPU, executing locally: stop before any job runs."""
    if config["gpu_runs"] != "always" or not workflow.local_exec:
        return
    need = sorted({str(job) for job in workflow.dag.needrun_jobs() if job.resources.get("gpu", 0)})
    if need and not gpu_present():
        raise WorkflowError(
            f"gpu_runs: always, but this machine has no GPU (nvidia-smi finds none) and {len(need)} job(s) "
            "need one. Run them on a GPU machine or cluster (profiles/gpu, profiles/slurm), use the tiny "
            "profile (--profile profiles/tiny), set gpu_runs: auto to leave them out, or device: cpu for a run."
        )


def raw_files(dataset):
    return {s: f"data/raw/{spec['file']}" for s, spec in config["datasets"][dataset]["splits"].items()}


def dataset_spec(wc):
    return json.dumps(config["datasets"][wc.dataset], sort_keys=True)


def the_run(wc):
    return RUNS[f"{wc.dataset}/{wc.name}"]


def spec_of(wc):
    return json.dumps(the_run(wc).result_spec(), sort_keys=True)


def runs_for(name):
    """Runs that fill rows of table/figure ``name``."""
    return [r for r in RUN_LIST if any(row == name or row.startswith(f"{name}/") for row in r.rows)]


def table_inputs(wc):
    """A table's runs' metrics, the paper's numbers, the full config (the paper's settings per row), the code."""
    runs = runs_for(wc.name)
    return {
        "metrics": [f"{r.out_dir}/metrics.json" for r in runs if r.key in IN_DAG],
        "paper": repo_path("config/paper.yaml"),
        "paper_config": repo_path("config/config.yaml"),
        "code": repo_path("pipeline/report.py"),
        "stats": sorted({f"data/{r.dataset}/stats.json" for r in runs}),  # vocabulary sizes (a uniform model's ppl)
    }


# ---- the report (snakemake --report): items, labels, the front page as its landing page
ITEMS = ("table1", "table2", "table3", "table4", "fig3", "fig4")
PROFILE = config.get("profile") or "full"
LABEL = config.get("label") or ""
SCALE = json.dumps(config.get("scale") or {}, sort_keys=True)
FRONT_PAGE = f"{RESULTS}/frontpage.rst"
with open(ROOT / "config/paper.yaml") as _f:
    PAPER_TITLES = {name: item["caption"] for name, item in yaml.safe_load(_f).items() if name in ITEMS}
# Training curves are plotted by the training jobs; they inherit this context (the profile label, the paper rows
# each run fills) from the environment, so that neither is a param that would retrain a run (pipeline.curves).
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
