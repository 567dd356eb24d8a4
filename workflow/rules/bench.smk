# Benchmarks (not part of `all`): kernel micro benchmark and the per-step scale benchmark.
#   snakemake --cores 8 --resources gpu=1 results/bench/kernel_cuda.csv results/bench/scale_cuda.csv
BENCH = config["bench"]


def kernel_manifest(wc):
    return f"build/kernels/{'llvm' if wc.device == 'cpu' else 'cuda'}/manifest.json"


rule bench_kernels:
    input: kernel_manifest
    output:
        csv="results/bench/kernel_{device}.csv",
        png=report("results/bench/kernel_{device}.png", category="Benchmarks", caption="../report/bench.rst"),
    params:
        states=" ".join(map(str, BENCH["kernel_states"])),
    resources:
        gpu=lambda wc: int(wc.device == "cuda"),
    wildcard_constraints:
        device="cpu|cuda",
    shell:
        "{PYTHON} -m hmm.kernels.bench --device {wildcards.device} --states {params.states} "
        "--kernels $(dirname {input}) --out {output.csv}"


rule bench_scale:
    input: kernel_manifest
    output:
        csv="results/bench/scale_{device}.csv",
        png=report("results/bench/scale_{device}.png", category="Benchmarks", caption="../report/bench.rst"),
    params:
        states=lambda wc: " ".join(map(str, BENCH["scale_states"][wc.device])),
        clusters=BENCH["scale_num_clusters"],
        steps=BENCH["scale_steps"],
    resources:
        gpu=lambda wc: int(wc.device == "cuda"),
    wildcard_constraints:
        device="cpu|cuda",
    shell:
        "{PYTHON} -m hmm.bench_scale --device {wildcards.device} --states {params.states} "
        "--num-clusters {params.clusters} --steps {params.steps} --backend tvm "
        "--kernels $(dirname {input}) --out {output.csv}"
