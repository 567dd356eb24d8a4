# Checks of a run under a cluster executor (profiles/slurm), made once the DAG is known and before any job
# is submitted; the partitions and sizes themselves come from config slurm: (common.smk, job_resources).
import signal


def check_cluster_before_jobs(workflow):
    """GPU runs must be in the DAG, every request must fit a node of its partition, and SIGTERM cancels the
    submitted jobs as Ctrl-C does (snakemake cancels them on Ctrl-C only)."""
    if workflow.local_exec:
        return
    if config["gpu_runs"] == "auto" and NOT_RUN:
        raise WorkflowError(
            f"{len(NOT_RUN)} GPU run(s) were left out of the DAG under the cluster executor "
            f"{workflow.executor_plugin.name}: common.smk (cluster_executor) did not see it. Add --config "
            "gpu_runs=always and report this."
        )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    check_requests_fit(workflow.dag.needrun_jobs())


def slurm_nodes(partition):
    """(cpus, mem_mb) of every node of a SLURM partition by sinfo; None where sinfo cannot say."""
    try:
        proc = subprocess.run(
            ["sinfo", "--Node", "--noheader", "--partition", partition, "--format", "%c %m"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode or not rows:
        return None
    return [(int(cpus.rstrip("+")), int(mem.rstrip("+"))) for cpus, mem in rows]


def check_requests_fit(jobs):
    """Stop before submitting if a job asks more CPUs or memory than every node of its partition has:
    SLURM would accept it and keep it pending for ever (reason PartitionConfig)."""
    nodes, too_big = {}, []
    for job in jobs:
        partition = job.resources.get("slurm_partition")
        if not partition:
            continue
        if partition not in nodes:
            nodes[partition] = slurm_nodes(partition)
        cpus, mem = job.resources.get("cpus_per_task") or job.threads, job.resources.get("mem_mb") or 0
        if nodes[partition] and not any(cpus <= c and mem <= m for c, m in nodes[partition]):
            too_big.append(f"{job} ({partition}: {cpus} cpus, {mem} MB)")
    if too_big:
        sizes = {p: sorted(set(n)) for p, n in nodes.items() if n}
        raise WorkflowError(
            f"{len(too_big)} job(s) ask more than any node of their partition has (nodes as (cpus, MB): "
            f"{sizes}); SLURM would keep them pending for ever: {'; '.join(too_big)}. Fit slurm.jobs (or the "
            "partitions) to your site with --configfile (docs/slurm.md)."
        )
