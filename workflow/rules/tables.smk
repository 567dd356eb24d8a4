# The paper's tables and figures: ours beside the paper's numbers (config/paper.yaml), each as an image, a
# sortable HTML table and a CSV; the front page (the report's landing page) counts their status columns.


rule table:
    input:
        unpack(table_inputs),
    output:
        csv=report(
            f"{RESULTS}/{{name}}.csv",
            category=report_category,
            labels=report_labels("CSV"),
            caption="../report/tables.rst",
        ),
        png=report(
            f"{RESULTS}/{{name}}.png",
            category=report_category,
            labels=report_labels("image"),
            caption="../report/tables.rst",
        ),
        html=report(
            f"{RESULTS}/{{name}}.html",
            category=report_category,
            labels=report_labels("sortable table"),
            caption="../report/tables.rst",
        ),
    log:
        f"logs/tables{RESULTS[len('results'):]}/{{name}}.log",
    wildcard_constraints:
        name="table[1-4]|fig[34]",
    conda:
        ENV
    threads: job_threads("table")
    resources:
        **job_resources("table"),
    params:
        runs=lambda wc: json.dumps([r.to_dict() for r in runs_for(wc.name)], sort_keys=True),
        kind=lambda wc: "table" if wc.name.startswith("table") else "figure",
        not_run=lambda wc: json.dumps({r.key: NOT_RUN[r.key] for r in runs_for(wc.name) if r.key in NOT_RUN}),
        profile=PROFILE,
        label=LABEL,
        scale=SCALE,
        title=lambda wc: PAPER_TITLES[wc.name],
        reference=os.path.relpath(filing_roots(config, Path.cwd())[0]),  # tiny: its own, never the committed
        runs_dir=f"{RESULTS}/runs",  # the recipe in use's runs (results/<recipe>/runs for another than the default)
        reads=table_reads,  # what the table reads of runs outside the DAG: a new import remakes it
    shell:
        "python -m pipeline.reporting.report {params.kind} --name {wildcards.name} --paper {input.paper} "
        "--paper-config {input.paper_config} --runs {params.runs:q} --runs-dir {params.runs_dir} "
        "--reference {params.reference} "
        "--not-run {params.not_run:q} --profile {params.profile} --label={params.label:q} --scale {params.scale:q} "
        "--data-stats {input.stats} --csv {output.csv} --png {output.png} --html {output.html} > {log} 2>&1"


rule frontpage:
    """The report's landing page (Snakefile: report:) from the tables' and figures' CSVs."""
    input:
        tables=expand(f"{RESULTS}/{{name}}.csv", name=ITEMS),
        paper=repo_path("config/paper.yaml"),
        code=repo_path("pipeline/reporting/frontpage.py"),
    output:
        FRONT_PAGE,
    log:
        f"logs/tables{RESULTS[len('results'):]}/frontpage.log",
    conda:
        ENV
    threads: job_threads("frontpage")
    resources:
        **job_resources("frontpage"),
    params:
        profile=PROFILE,
        label=LABEL,
        curves=len(CURVES),
        fidelity=lambda wc: f"--fidelity {RESULTS}/fidelity.csv" if os.path.exists(f"{RESULTS}/fidelity.csv") else "",
    shell:
        "python -m pipeline.reporting.frontpage --tables {input.tables} --paper {input.paper} --profile {params.profile} "
        "--label={params.label:q} --curves {params.curves} {params.fidelity} --out {output} > {log} 2>&1"


# `all`: the tables with the front page that counts them, the figures
TABLES = expand(f"{RESULTS}/table{{n}}.{{ext}}", n=range(1, 5), ext=("csv", "png", "html")) + [FRONT_PAGE]
FIGURES = expand(f"{RESULTS}/fig{{n}}.{{ext}}", n=(3, 4), ext=("csv", "png", "html"))
