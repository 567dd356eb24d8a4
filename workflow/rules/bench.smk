# Benchmarks (not part of `all`): kernel micro benchmark and the per-step scale benchmark.
#   snakemake results/bench/kernel_cuda.csv results/bench/scale_cuda.csv --cores 8 --resources gpu=1
BENCH = config["bench"]


rule bench_kernels:
    input:
        kernel_manifest,
    output:
        csv="results/bench/kernel_{device}.csv",
        png=report("results/bench/kernel_{device}.png", category="Benchmarks", caption="../report/bench.rst"),
    log:
        "logs/bench/kernel_{device}.log",
    wildcard_constraints:
        device="cpu|cuda",
    conda:
        ENV
    threads: job_threads(bench_kind)
    resources:
        **job_resources(bench_kind),
        gpu=lambda wc: int(wc.device == "cuda"),
    params:
        states=" ".join(map(str, BENCH["kernel_states"])),
        kernels=lambda wc, input: os.path.dirname(input[0]),
    shell:
        "OMP_NUM_THREADS={threads} TVM_NUM_THREADS={threads} python -m bench.kernels --device {wildcards.device} --states {params.states} "
        "--kernels {params.kernels} --out {output.csv} > {log} 2>&1"


rule bench_scale:
    input:
        kernel_manifest,
    output:
        csv="results/bench/scale_{device}.csv",
        png=report("results/bench/scale_{device}.png", category="Benchmarks", caption="../report/bench.rst"),
    log:
        "logs/bench/scale_{device}.log",
    wildcard_constraints:
        device="cpu|cuda",
    conda:
        ENV
    threads: job_threads(bench_kind)
    resources:
        **job_resources(bench_kind),
        gpu=lambda wc: int(wc.device == "cuda"),
    params:
        states=lambda wc: " ".join(map(str, BENCH["scale_states"][wc.device])),
        clusters=BENCH["scale_num_clusters"],
        steps=BENCH["scale_steps"],
        kernels=lambda wc, input: os.path.dirname(input[0]),
    shell:
        "OMP_NUM_THREADS={threads} TVM_NUM_THREADS={threads} python -m bench.scale --device {wildcards.device} --states {params.states} "
        "--num-clusters {params.clusters} --steps {params.steps} --backend tvm "
        "--kernels {params.kernels} --out {output.csv} > {log} 2>&1"
