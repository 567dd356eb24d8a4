# results/fidelity.csv / .png: the default recipe, the released code's, and each difference switched alone,
# over seeds (config: fidelity, recipes; pipeline/reporting/fidelity.py).  Not part of `all`: 21 CPU runs at
# full size (50 min on 2 cores).


FIDELITY_METRICS = sorted(
    {
        f"{RUNS[k].out_dir}/metrics.json"
        for row in (FIDELITY or {}).get("rows", [])
        for k in row["default_runs"] + row["switched_runs"]
    }
)


rule fidelity:
    input:
        metrics=FIDELITY_METRICS,
        code=repo_path("pipeline/reporting/fidelity.py"),
    output:
        csv=report(
            f"{RESULTS}/fidelity.csv",
            category="Paper text vs released code",
            labels={"form": "CSV"},
            caption="../report/fidelity.rst",
        ),
        png=report(
            f"{RESULTS}/fidelity.png",
            category="Paper text vs released code",
            labels={"form": "image"},
            caption="../report/fidelity.rst",
        ),
    log:
        f"logs/tables{RESULTS[len('results'):]}/fidelity.log",
    conda:
        ENV
    params:
        spec=json.dumps(FIDELITY, sort_keys=True),
        label=LABEL,
    shell:
        "python -m pipeline.reporting.fidelity --spec {params.spec:q} --metrics {input.metrics} --label={params.label:q} "
        "--csv {output.csv} --png {output.png} > {log} 2>&1"
