# TVM scan kernels, compiled ahead of time for every live-state count the runs need: llvm for
# CPUs, cuda (host code + nvcc fatbins) for the configured GPU archs.  Every library is a tracked
# output, so a missing one is rebuilt; a corrupt one is refused when loaded (manifest sha256).


rule kernels_llvm:
    input:
        KERNEL_CODE,
    output:
        manifest="build/kernels/llvm/manifest.json",
        libraries=expand("build/kernels/llvm/scan_n{n}.so", n=KERNEL_STATES),
    log:
        "logs/kernels/llvm.log",
    conda:
        ENV
    threads: job_threads("kernels")
    resources:
        **job_resources("kernels"),
    params:
        states=" ".join(map(str, KERNEL_STATES)),
        out=lambda wc, output: os.path.dirname(output.manifest),
    shell:
        "python -m hmm.kernels.build --target llvm --states {params.states} --out {params.out} "
        "> {log} 2>&1 && tail -n 1 {log}"


rule kernels_cuda:
    input:
        KERNEL_CODE,
    output:
        manifest="build/kernels/cuda/manifest.json",
        libraries=expand(
            "build/kernels/cuda/scan_n{n}_{arch}.{ext}", n=KERNEL_STATES, arch=CUDA_ARCHS, ext=("so", "cu", "fatbin")
        ),
    log:
        "logs/kernels/cuda.log",
    conda:
        ENV
    threads: job_threads("kernels")
    resources:
        **job_resources("kernels"),
    params:
        states=" ".join(map(str, KERNEL_STATES)),
        archs=" ".join(CUDA_ARCHS),
        out=lambda wc, output: os.path.dirname(output.manifest),
    shell:
        "python -m hmm.kernels.build --target cuda --states {params.states} --arch {params.archs} "
        "--out {params.out} > {log} 2>&1 && tail -n 1 {log}"
