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
        "NUMBA_NUM_THREADS={threads} OMP_NUM_THREADS={threads} python -m pipeline.data.clusters --data {params.data} "
        "--num-clusters {wildcards.num_clusters} --alpha {params.alpha} --out {output.clusters} "
        "--summary {output.summary} > {log} 2>&1 && tail -n 1 {log}"


# Clusters from a wcluster `paths` file: the authors' (clusters: authors; downloaded from harvardnlp/hmm-lm at a
# pinned commit unless cluster_paths names a local copy; sha256 checked either way) or the user's (paths-file).
rule authors_paths:
    output:
        "data/{dataset}/clusters/authors-{num_clusters}.paths",
    log:
        "logs/clusters/{dataset}-authors-{num_clusters}.log",
    wildcard_constraints:
        num_clusters=r"\d+",
    conda:
        ENV
    shell:
        "python -m pipeline.data.clusters --fetch-authors {wildcards.dataset} --num-clusters {wildcards.num_clusters} "
        "--out {output} > {log} 2>&1"


rule clusters_from_paths:
    input:
        stats="data/{dataset}/stats.json",
        sums="data/{dataset}/SHA256SUMS",
        paths=paths_file,
    output:
        clusters="data/{dataset}/clusters/{source}-{num_clusters}.tsv",
        sha256="data/{dataset}/clusters/{source}-{num_clusters}.tsv.sha256",
        summary="data/{dataset}/clusters/{source}-{num_clusters}.md",
    log:
        "logs/clusters/{dataset}-{source}-{num_clusters}.log",
    wildcard_constraints:
        source=r"authors|file-[0-9a-f]{12}",
        num_clusters=r"\d+",
    conda:
        ENV
    params:
        data=lambda wc, input: os.path.dirname(input.stats),
        authors=lambda wc: f"--authors {wc.dataset}" if wc.source == "authors" else "",
    shell:
        "python -m pipeline.data.clusters --data {params.data} --num-clusters {wildcards.num_clusters} --paths {input.paths} "
        "{params.authors} --out {output.clusters} --summary {output.summary} > {log} 2>&1 && tail -n 1 {log}"
