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


def _gpu_present():
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


try:
    RUNS = {run.key: run for run in resolve_runs(config)}
except ConfigError as err:
    raise WorkflowError(f"config: {err}") from None

GPU = config["gpu_runs"] == "always" or (config["gpu_runs"] == "auto" and _gpu_present())
IN_DAG = {key: run for key, run in RUNS.items() if GPU or not run.needs_gpu}
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


def kernel_states(run):
    """Live states per step a TVM run needs kernels for: k' in training, k at evaluation."""
    s = run.settings
    return {s.kept_per_block, s.states_per_block}


for _run in RUNS.values():
    if getattr(_run.settings, "backend", "torch") == "tvm":
        missing = kernel_states(_run) - set(config["kernels"]["states"])
        if missing:
            raise WorkflowError(f"config: run {_run.key} uses backend tvm with {sorted(missing)} live states per step; "
                                f"add them to kernels.states (now {config['kernels']['states']})")


wildcard_constraints:
    dataset="|".join(config["datasets"]),
