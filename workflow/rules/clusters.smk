# Brown clusters of the training vocabulary: the VLNHMM's emission blocks.


rule brown_clusters:
    input: "data/{dataset}/stats.json"
    output:
        clusters="data/{dataset}/clusters/brown-{num_clusters}.tsv",
        summary="data/{dataset}/clusters/brown-{num_clusters}.md",
    params:
        alpha=config["brown"]["alpha"],
    wildcard_constraints:
        num_clusters=r"\d+",
    threads: 1
    log: "logs/clusters/{dataset}-brown-{num_clusters}.log"
    shell:
        # one numba thread: its spinning workers slow down 100x when jobs share the cores
        "NUMBA_NUM_THREADS={threads} OMP_NUM_THREADS={threads} {PYTHON} -m hmm.clusters --data data/{wildcards.dataset} --num-clusters {wildcards.num_clusters} "
        "--alpha {params.alpha} --out {output.clusters} --summary {output.summary} > {log} 2>&1 && tail -n 1 {log}"
