# Shared definitions: the typed run registry, paths, the GPU switch.
import json
import re
import shlex
import shutil
import subprocess

from hmm.config import ConfigError, resolve_runs

PYTHON = sys.executable
SPLITS = ("train", "valid", "test")


def _root_path(value):
    """Config paths are relative to the repository root, whatever the working directory."""
    return None if value is None else (ROOT / value).resolve()


_GPU = []


def gpu_present():
    """Whether nvidia-smi finds a GPU (asked once, and only where some run needs a GPU)."""
    if not _GPU:
        smi = shutil.which("nvidia-smi")
        _GPU.append(smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0)
    return _GPU[0]


def check_gpu_before_jobs(workflow):
    """gpu_runs: always on a machine without a GPU, executing locally: stop before any job runs."""
    if config["gpu_runs"] != "always" or not workflow.local_exec:
        return
    need = sorted({str(job) for job in workflow.dag.needrun_jobs() if job.resources.get("gpu", 0)})
    if need and not gpu_present():
        raise WorkflowError(
            f"gpu_runs: always, but this machine has no GPU (nvidia-smi finds none) and {len(need)} job(s) "
            "need one. Run them on a GPU machine or cluster (profiles/gpu, profiles/slurm), use the tiny "
            "profile (--profile profiles/tiny), set gpu_runs: auto to leave them out, or device: cpu for a run.")


try:
    RUNS = {run.key: run for run in resolve_runs(config)}
except ConfigError as err:
    raise WorkflowError(f"config: {err}") from None

IN_DAG = {key: run for key, run in RUNS.items() if not run.needs_gpu or config["gpu_runs"] == "always"
          or (config["gpu_runs"] == "auto" and gpu_present())}
NOT_RUN = {key: "not run: needs a GPU and none was found (gpu_runs: auto); see README, Running on a GPU"
           for key in RUNS if key not in IN_DAG}
MIRROR = _root_path(config.get("mirror"))
KENLM_BIN = _root_path(config["kenlm"]["bin_dir"])
TRAINED = {key: run for key, run in IN_DAG.items() if run.train is not None}


def run_dir(run):
    return f"results/runs/{run.dataset}/{run.name}"


def names_of(models):
    """Wildcard constraint: the run names of these models (names are unique per model)."""
    names = sorted({r.name for r in RUNS.values() if r.model in models})
    clash = names and {r.name for r in RUNS.values() if r.model not in models} & set(names)
    if clash:
        raise WorkflowError(f"config: run name(s) {sorted(clash)} used by different models; names must tell the model")
    return "|".join(map(re.escape, names)) or "(?!)"


# Kernels for every live-state count any configured run needs (k' in training, k at evaluation)
# and the kernel benchmark's sizes
KERNEL_STATES = sorted(set(config["bench"]["kernel_states"]).union(*(run.scan_sizes for run in RUNS.values())))


wildcard_constraints:
    dataset="|".join(config["datasets"]),
