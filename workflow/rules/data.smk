# Raw data (download or local mirror, SHA-256 verified) and tokenized splits.


def raw_files(dataset):
    return {s: f"data/raw/{spec['file']}" for s, spec in config["datasets"][dataset]["splits"].items()}


for _name, _spec in config["datasets"].items():

    rule:
        name: f"download_{_name}"
        output: list(raw_files(_name).values())
        params:
            spec=json.dumps(_spec),
            mirror=f"--mirror {MIRROR}" if MIRROR else "",
        log: f"logs/download/{_name}.log"
        message: f"Fetching {_name} ({'mirror ' + str(MIRROR) if MIRROR else 'download'}) and checking SHA-256"
        shell: "{PYTHON} -m hmm.fetch --spec '{params.spec}' --out data/raw {params.mirror} 2>&1 | tee {log}"


rule prepare:
    """Vocabulary (train words + <eos>) and int token files; re-verifies the raw checksums."""
    input: lambda wc: raw_files(wc.dataset).values()
    output:
        vocab="data/{dataset}/vocab.tsv",
        stats="data/{dataset}/stats.json",
        ids=expand("data/{{dataset}}/{split}{ext}", split=SPLITS, ext=(".npy", ".docs.npy")),
    params:
        spec=lambda wc: json.dumps(config["datasets"][wc.dataset]),
        files=lambda wc: " ".join(f"--{s} {f}" for s, f in raw_files(wc.dataset).items()),
        documents=lambda wc: config["datasets"][wc.dataset]["documents"],
        max_lines=lambda wc: json.dumps(config["max_lines"] | config["datasets"][wc.dataset].get("max_lines", {})),
    log: "logs/prepare/{dataset}.log"
    shell:
        "({PYTHON} -m hmm.fetch --verify --spec '{params.spec}' --out data/raw && "
        "{PYTHON} -m hmm.data {params.files} --out data/{wildcards.dataset} "
        "--documents {params.documents} --max-lines '{params.max_lines}') 2>&1 | tee {log}"
