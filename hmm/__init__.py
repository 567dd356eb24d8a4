"""The paper's model: the very large neural HMM (VLNHMM) of Chiu & Rush (2020).

config      HMMConfig: its settings (and the typed-settings machinery)
model       blocked emissions, neural parameterization, state dropout, scoring of windows
inference   exact forward/backward scans over the live states (the reference backend)
matmul_scan the same scans as max-shifted matrix products (backend matmul: the fast one on CPU)
normalizer  transition row log-normalizers (PyTorch tiles; fused_normalizer: Triton)
kernels/    the scans compiled by TVM (llvm, cuda), their loader and checks

Nothing here imports the pipeline, the baselines or the benchmarks.
"""
