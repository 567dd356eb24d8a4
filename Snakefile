# The VLNHMM reproduction pipeline (Chiu & Rush 2020).  Stages live in workflow/rules/*.smk.
#   snakemake results/table1.csv --cores 8 --resources gpu=1      one table (full data; targets first)
#   snakemake --profile profiles/tiny all                          everything, tiny data, CPU
# See README.md for the targets and config/README.md for every run setting.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

ROOT = Path(workflow.basedir).resolve()
sys.path.insert(0, str(ROOT))

from hmm.config import ConfigError
from pipeline.profiles import check_schema


envvars:
    "PATH",


# Jobs run `python -m ...` with the interpreter (virtual environment) that runs snakemake.
PATH = os.environ["PATH"]
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{PATH}"


configfile: ROOT / "config/config.yaml"


# A profile's config overlay (config/<profile>.yaml, e.g. the tiny profile's) sits under the
# user's --configfile / --config overlays even when those replace the profile's own settings.
if config.get("profile") and (ROOT / f"config/{config['profile']}.yaml").resolve() not in {
    Path(f).resolve() for f in workflow.overwrite_configfiles or ()
}:

    configfile: ROOT / f"config/{config['profile']}.yaml"


try:  # one line per problem (snakemake's validate prints the whole schema and config)
    check_schema(config, ROOT / "config/schema.yaml")
except ConfigError as err:
    raise WorkflowError(f"config: {err}") from None

# The tiny config's data and runs in the repository root would sit where the full-size ones live (data/,
# results/runs/, build/checkpoints/: a full-size run's checkpoint would be set aside by a tiny run of it).
if config.get("profile") == "tiny" and Path.cwd().resolve() == ROOT:
    raise WorkflowError(
        "the tiny config (profile: tiny) would write its data and runs into the repository root, over the "
        "full-size ones: use --profile profiles/tiny (its outputs go to tiny/), or --directory DIR"
    )


include: "workflow/rules/common.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/clusters.smk"
include: "workflow/rules/kernels.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/fidelity.smk"


default_local_resources(workflow)


# The report's landing page: the front page the pipeline writes (results/frontpage.rst), see tables.smk.
report: report_description()


rule all:
    default_target: True
    input:
        TABLES,
        FIGURES,
        CURVES,


onstart:
    announce_defaults()
    check_gpu_before_jobs(workflow)
    check_cluster_before_jobs(workflow)
    announce_cpu_training(workflow)


onerror:
    explain_failed_download(log)
