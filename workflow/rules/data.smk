# Raw data (download or local mirror, SHA-256 verified) and tokenized splits.


rule dataset_spec_file:
    """The `datasets:` entry of a dataset as a file, which the download and prepare commands read (inline, its JSON
    would fill each command with kilobytes); a change to the entry rewrites it (params), and so fetches again."""
    output:
        "data/raw/{dataset}.spec.json",
    log:
        "logs/download/{dataset}.spec.log",
    localrule: True
    params:
        spec=dataset_spec,
    run:
        write_spec(params.spec, output[0], log[0])


for _name in config["datasets"]:

    rule:
        name:
            f"download_{_name}"
        input:
            spec=f"data/raw/{_name}.spec.json",
        output:
            list(raw_files(_name).values()),
        log:
            f"logs/download/{_name}.log",
        conda:
            ENV
        threads: job_threads("download")
        resources:
            **job_resources("download"),
        params:
            mirror=f"--mirror {MIRROR}" if MIRROR else "",
        message:
            f"Fetching {_name} ({'mirror ' + MIRROR if MIRROR else 'download'}) and checking SHA-256"
        shell:
            "python -m pipeline.data.fetch --spec {input.spec} --out data/raw {params.mirror} 2>&1 | tee {log}"


rule prepare:
    """Vocabulary (train words + <eos>) and int token files; re-verifies the raw checksums."""
    input:
        raw=lambda wc: raw_files(wc.dataset).values(),
        spec="data/raw/{dataset}.spec.json",
    output:
        vocab="data/{dataset}/vocab.tsv",
        stats="data/{dataset}/stats.json",
        ids=expand("data/{{dataset}}/{split}{ext}", split=SPLITS, ext=(".npy", ".docs.npy")),
        sums="data/{dataset}/SHA256SUMS",
    log:
        "logs/prepare/{dataset}.log",
    conda:
        ENV
    threads: job_threads("prepare")
    resources:
        **job_resources("prepare"),
    params:
        files=lambda wc: " ".join(f"--{s} {f}" for s, f in raw_files(wc.dataset).items()),
        documents=lambda wc: config["datasets"][wc.dataset]["documents"],
        max_lines=lambda wc: json.dumps(config["max_lines"] | config["datasets"][wc.dataset].get("max_lines", {})),
        out=lambda wc, output: os.path.dirname(output.stats),
    shell:
        "(python -m pipeline.data.fetch --verify --spec {input.spec} --out data/raw && "
        "python -m pipeline.data.corpus {params.files} --out {params.out} "
        "--documents {params.documents} --max-lines {params.max_lines:q}) 2>&1 | tee {log}"
