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


rule bench_cpu_training:
    """CPU roofline of the FF, LSTM and VLNHMM 1,024 training steps, fp32 vs bf16 (pipeline.cpu: the kind of
    this CPU names the file; asking for another kind's file stops the job)."""
    output:
        csv="results/bench/cpu_{kind}.csv",
        png=report("results/bench/cpu_{kind}.png", category="Benchmarks", caption="../report/bench.rst"),
    log:
        "logs/bench/cpu_{kind}.log",
    wildcard_constraints:
        kind="amx|avx512_bf16|none",
    conda:
        ENV
    threads: job_threads("bench_cpu")
    resources:
        **job_resources("bench_cpu"),
    shell:
        "OMP_NUM_THREADS={threads} python -m bench.cpu --kind {wildcards.kind} --threads {threads} --out {output.csv} "
        "> {log} 2>&1"


rule bench_cpu_scans:
    """The VLNHMM 1,024-state runs' training step and evaluation batch on this CPU by scan backend: the log-space
    reference against matmul (the file is named by this CPU's kind, as bench_cpu_training's)."""
    output:
        csv="results/bench/cpu_scans_{kind}.csv",
        png=report("results/bench/cpu_scans_{kind}.png", category="Benchmarks", caption="../report/bench.rst"),
    log:
        "logs/bench/cpu_scans_{kind}.log",
    wildcard_constraints:
        kind="amx|avx512_bf16|none",
    conda:
        ENV
    threads: job_threads("bench_cpu")
    resources:
        **job_resources("bench_cpu"),
    shell:
        "OMP_NUM_THREADS={threads} python -m bench.cpu_scans --kind {wildcards.kind} --threads {threads} "
        "--out {output.csv} > {log} 2>&1"
