# The paper's tables and figures: ours beside the paper's numbers (config/paper.yaml).


rule table:
    input:
        unpack(table_inputs),
    output:
        csv="results/{name}.csv",
        png=report("results/{name}.png", category="Tables and figures", caption="../report/tables.rst"),
    log:
        "logs/tables/{name}.log",
    wildcard_constraints:
        name="table[1-4]|fig[34]",
    conda:
        ENV
    params:
        runs=lambda wc: json.dumps([r.to_dict() for r in runs_for(wc.name)], sort_keys=True),
        kind=lambda wc: "table" if wc.name.startswith("table") else "figure",
        not_run=lambda wc: json.dumps({r.key: NOT_RUN[r.key] for r in runs_for(wc.name) if r.key in NOT_RUN}),
        label=config.get("label") or "",
        reference=repo_path("results/reference"),
    shell:
        "python -m pipeline.report {params.kind} --name {wildcards.name} --paper {input.paper} "
        "--runs {params.runs:q} --reference {params.reference} --not-run {params.not_run:q} "
        "--profile {params.label:q} --csv {output.csv} --png {output.png} > {log} 2>&1"


TABLES = expand("results/table{n}.{ext}", n=range(1, 5), ext=("csv", "png"))
FIGURES = expand("results/fig{n}.{ext}", n=(3, 4), ext=("csv", "png"))
