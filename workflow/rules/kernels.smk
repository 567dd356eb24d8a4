# TVM scan kernels, compiled ahead of time (llvm for CPU, cuda for the configured GPU archs).


rule kernels:
    output: "build/kernels/{target}/manifest.json"
    params:
        states=" ".join(map(str, config["kernels"]["states"])),
        archs=lambda wc: "--arch " + " ".join(config["kernels"]["cuda_archs"]) if wc.target == "cuda" else "",
    wildcard_constraints:
        target="llvm|cuda",
    log: "logs/kernels/{target}.log"
    shell:
        "{PYTHON} -m hmm.kernels.build --target {wildcards.target} --states {params.states} {params.archs} "
        "--out build/kernels/{wildcards.target} 2>&1 | tee {log}"
