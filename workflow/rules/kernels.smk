# TVM scan kernels, compiled ahead of time for every live-state count the runs need: llvm for
# CPUs, cuda (host code + nvcc fatbins) for the configured GPU archs.  Every library is a tracked
# output, so a missing one is rebuilt; a corrupt one is refused when loaded (manifest sha256).


rule kernels_llvm:
    output:
        manifest="build/kernels/llvm/manifest.json",
        libraries=expand("build/kernels/llvm/scan_n{n}.so", n=KERNEL_STATES),
    params:
        states=" ".join(map(str, KERNEL_STATES)),
    log: "logs/kernels/llvm.log"
    shell:
        "{PYTHON} -m hmm.kernels.build --target llvm --states {params.states} "
        "--out build/kernels/llvm > {log} 2>&1 && tail -n 1 {log}"


rule kernels_cuda:
    output:
        manifest="build/kernels/cuda/manifest.json",
        libraries=expand("build/kernels/cuda/scan_n{n}_{arch}.{ext}", n=KERNEL_STATES,
                         arch=config["kernels"]["cuda_archs"], ext=("so", "cu", "fatbin")),
    params:
        states=" ".join(map(str, KERNEL_STATES)),
        archs=" ".join(config["kernels"]["cuda_archs"]),
    log: "logs/kernels/cuda.log"
    shell:
        "{PYTHON} -m hmm.kernels.build --target cuda --states {params.states} --arch {params.archs} "
        "--out build/kernels/cuda > {log} 2>&1 && tail -n 1 {log}"
