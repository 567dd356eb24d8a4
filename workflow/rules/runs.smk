# One target per experiment: results/runs/{dataset}/{name}/metrics.json (see `runs:` in the config).


def the_run(wc):
    return RUNS[f"{wc.dataset}/{wc.name}"]


def spec_of(wc):
    """The run's resolved settings as JSON: a params rerun trigger (a changed setting reruns it)."""
    return json.dumps(the_run(wc).result_spec(), sort_keys=True)


rule kn5:
    input:
        data="data/{dataset}/stats.json",
    output: "results/runs/{dataset}/{name}/metrics.json"
    params:
        spec=spec_of,
        order=lambda wc: the_run(wc).settings.order,
        memory=config["kenlm"]["memory"],
        fallback="--discount-fallback" if config["kenlm"]["discount_fallback"] else "",
    wildcard_constraints:
        name=names_of({"kn5"}),
    log: "logs/runs/{dataset}/{name}.log"
    shell:
        "{PYTHON} -m baselines.kn5 --data data/{wildcards.dataset} --bin-dir {KENLM_BIN} "
        "--work build/kenlm/{wildcards.dataset}/{wildcards.name} --out {output} --order {params.order} "
        "--memory {params.memory} {params.fallback} --spec {params.spec:q} 2>&1 | tee {log}"


def train_inputs(wc):
    run = the_run(wc)
    inputs = {"data": f"data/{wc.dataset}/stats.json"}
    if run.model == "vlnhmm" and run.settings.constraint == "brown":
        inputs["clusters"] = f"data/{wc.dataset}/clusters/brown-{run.settings.num_clusters}.tsv"
    if run.scan_sizes and run.settings.backend == "tvm":
        target = run.kernel_target
        inputs["kernels"] = [f"build/kernels/{target}/manifest.json"] + [
            f"build/kernels/{target}/scan_n{n}{'' if target == 'llvm' else '_' + arch}.so"
            for n in sorted(run.scan_sizes) for arch in (config["kernels"]["cuda_archs"][-1:])]
    return inputs


rule train:
    """FF, LSTM and VLNHMM runs; resumes from build/checkpoints/... after an interruption."""
    input: unpack(train_inputs)
    output:
        metrics="results/runs/{dataset}/{name}/metrics.json",
        curve="results/runs/{dataset}/{name}/curve.csv",
        plot=report("results/runs/{dataset}/{name}/curve.png", category="Training curves",
                    subcategory="{dataset}", labels={"run": "{dataset}/{name}"}, caption="../report/curve.rst"),
    params:
        spec=spec_of,
        clusters=lambda wc, input: f"--clusters {input.clusters}" if "clusters" in input.keys() else "",
        kernels=lambda wc, input: f"--kernels {Path(input.kernels[0]).parent}" if "kernels" in input.keys() else "",
    resources:
        gpu=lambda wc: int(the_run(wc).needs_gpu),
    wildcard_constraints:
        name=names_of({"ff", "lstm", "vlnhmm"}),
    threads: lambda wc: 2 if the_run(wc).needs_gpu else 1
    log: "logs/runs/{dataset}/{name}.log"
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON} -m hmm.train --spec {params.spec:q} --data data/{wildcards.dataset} {params.clusters} "
        "{params.kernels} --out results/runs/{wildcards.dataset}/{wildcards.name} "
        "--checkpoint build/checkpoints/{wildcards.dataset}/{wildcards.name}/ckpt.pt 2>&1 | tee {log}"


CURVES = [f"{run_dir(r)}/curve.png" for r in TRAINED.values()]
