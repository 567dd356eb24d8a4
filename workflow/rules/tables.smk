# The paper's tables and figures: ours beside the paper's numbers (config/paper.yaml).

PROFILE_LABEL = config.get("label") or ""


def runs_for(name):
    """Runs that fill rows of table/figure ``name``."""
    return [r for r in RUNS.values() if any(row == name or row.startswith(name + "/") for row in r.rows)]


def report_inputs(wc):
    runs = runs_for(wc.name)
    return {"metrics": [f"{run_dir(r)}/metrics.json" for r in runs if r.key in IN_DAG],
            "paper": str(ROOT / "config/paper.yaml"), "code": str(ROOT / "hmm/report.py")}


def not_run(wc):
    return shlex.quote(json.dumps({r.key: NOT_RUN[r.key] for r in runs_for(wc.name) if r.key in NOT_RUN}))


rule table:
    input: unpack(report_inputs)
    output:
        csv="results/{name}.csv",
        png=report("results/{name}.png", category="Tables and figures", caption="../report/tables.rst"),
    params:
        runs=lambda wc: json.dumps([r.to_dict() for r in runs_for(wc.name)], sort_keys=True),
        kind=lambda wc: "table" if wc.name.startswith("table") else "figure",
        not_run=not_run,
        label=f"--profile {shlex.quote(PROFILE_LABEL)}" if PROFILE_LABEL else "",
        reference=str(ROOT / "results/reference"),
    wildcard_constraints:
        name="table[1-4]|fig[34]",
    shell:
        "{PYTHON} -m hmm.report {params.kind} --name {wildcards.name} --paper {input.paper} --runs {params.runs:q} "
        "--reference {params.reference} --not-run {params.not_run} {params.label} "
        "--csv {output.csv} --png {output.png}"


TABLES = expand("results/table{n}.{ext}", n=range(1, 5), ext=("csv", "png"))
FIGURES = expand("results/fig{n}.{ext}", n=(3, 4), ext=("csv", "png"))
