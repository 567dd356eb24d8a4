# Brown clusters of the training vocabulary: the VLNHMM's emission blocks.


rule brown_clusters:
    input:
        "data/{dataset}/stats.json",
        "data/{dataset}/SHA256SUMS",
    output:
        clusters="data/{dataset}/clusters/brown-{num_clusters}.tsv",
        sha256="data/{dataset}/clusters/brown-{num_clusters}.tsv.sha256",
        summary="data/{dataset}/clusters/brown-{num_clusters}.md",
    log:
        "logs/clusters/{dataset}-brown-{num_clusters}.log",
    wildcard_constraints:
        num_clusters=r"\d+",
    conda:
        ENV
    threads: job_threads("brown_clusters")
    resources:
        **job_resources("brown_clusters"),
    params:
        alpha=config["brown"]["alpha"],
        data=lambda wc, input: os.path.dirname(input[0]),
    shell:
        # one numba thread: its spinning workers slow down 100x when jobs share the cores
        "NUMBA_NUM_THREADS={threads} OMP_NUM_THREADS={threads} python -m pipeline.clusters --data {params.data} "
        "--num-clusters {wildcards.num_clusters} --alpha {params.alpha} --out {output.clusters} "
        "--summary {output.summary} > {log} 2>&1 && tail -n 1 {log}"
