# One target per experiment: results/runs/{dataset}/{name}/metrics.json (see `runs:` in the config; a run
# repeated over `seeds` has one more target per further seed, {name}@{seed}), with docs.npz beside it and
# SHA256SUMS, the record of its files written when it finishes: a table never uses a file that fails it.
# A run's resolved settings are a param: changing one reruns that run (Snakemake's params trigger),
# and the run records them in its metrics.json, so the tables never show a result of other settings.


rule kn5:
    input:
        data="data/{dataset}/stats.json",
        data_sums="data/{dataset}/SHA256SUMS",
    output:
        metrics=f"{RESULTS}/runs/{{dataset}}/{{name}}/metrics.json",
        docs=f"{RESULTS}/runs/{{dataset}}/{{name}}/docs.npz",  # scores per document (pipeline.intervals)
        sums=f"{RESULTS}/runs/{{dataset}}/{{name}}/SHA256SUMS",  # the run's record: the tables check it
    log:
        f"logs/runs{RESULTS[len('results'):]}/{{dataset}}/{{name}}.log",
    wildcard_constraints:
        name=name_pattern(RUN_LIST, {"kn5"}),
    conda:
        ENV
    threads: job_threads("kn5")
    resources:
        **job_resources("kn5"),
    params:
        spec=spec_of,
        data=lambda wc, input: os.path.dirname(input.data),
        work="build/kenlm/{dataset}/{name}",
        bin_dir=KENLM_BIN,
        memory=config["kenlm"]["memory"],
        fallback="--discount-fallback" if config["kenlm"]["discount_fallback"] else "",
    shell:
        "python -m pipeline.training.kn5 --spec {params.spec:q} --data {params.data} --bin-dir {params.bin_dir} "
        "--work {params.work} --out {output.metrics} --memory {params.memory} {params.fallback} 2>&1 | tee {log}"


rule train:
    """FF, LSTM and VLNHMM runs; resumes from build/checkpoints/... after an interruption."""
    input:
        unpack(lambda wc: the_run(wc).inputs(CUDA_ARCHS[-1])),
    output:
        metrics=f"{RESULTS}/runs/{{dataset}}/{{name}}/metrics.json",
        curve=f"{RESULTS}/runs/{{dataset}}/{{name}}/curve.csv",
        docs=f"{RESULTS}/runs/{{dataset}}/{{name}}/docs.npz",
        sums=f"{RESULTS}/runs/{{dataset}}/{{name}}/SHA256SUMS",  # the run's record: the tables check it
        plot=report(
            f"{RESULTS}/runs/{{dataset}}/{{name}}/curve.png",
            category="Training curves",
            subcategory="{dataset}",
            labels={"run": "{dataset}/{name}"},
            caption="../report/curve.rst",
        ),
    log:
        f"logs/runs{RESULTS[len('results'):]}/{{dataset}}/{{name}}.log",
    wildcard_constraints:
        name=name_pattern(RUN_LIST, {"ff", "lstm", "vlnhmm"}),
    conda:
        ENV
    threads: job_threads(train_kind)
    resources:
        **job_resources(train_kind),
        gpu=lambda wc: int(the_run(wc).needs_gpu),
    params:
        spec=spec_of,
        out=lambda wc: the_run(wc).out_dir,
        checkpoint=lambda wc: the_run(wc).checkpoint,
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline.training.train --spec {params.spec:q} --out {params.out} "
        "--checkpoint {params.checkpoint} 2>&1 | tee {log}"


# the fidelity runs (rows: fidelity) and runs of no row (diagnostics) are built by their own target, not by `all`
CURVES = [f"{run.out_dir}/curve.png" for run in TRAINED.values() if run.rows and "fidelity" not in run.rows]
