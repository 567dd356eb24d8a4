# Shared definitions: the typed run registry (pipeline.config), paths, the GPU switch.
import json
import shutil
import subprocess

from hmm.kernels import target_for
from pipeline.config import ConfigError, kernel_states, name_pattern, resolve_runs

SPLITS = ("train", "valid", "test")
ENV = "../../environment.yml"  # the pinned stack (conda users: --sdm conda)


def repo_path(path):
    """A path of the repository, relative to the working directory (a moved checkout reruns nothing)."""
    return None if path is None else os.path.relpath(ROOT / path)


try:
    RUN_LIST = resolve_runs(config)
except ConfigError as err:
    raise WorkflowError(f"config: {err}") from None
RUNS = {run.key: run for run in RUN_LIST}
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
    runs = runs_for(wc.name)
    return {
        "metrics": [f"{r.out_dir}/metrics.json" for r in runs if r.key in IN_DAG],
        "paper": repo_path("config/paper.yaml"),
    }


def kernel_manifest(wc):
    return f"build/kernels/{target_for(wc.device)}/manifest.json"


wildcard_constraints:
    dataset="|".join(config["datasets"]),
