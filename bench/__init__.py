"""Benchmarks: the TVM scan kernels against PyTorch (bench.kernels) and the cost of the VLNHMM's
training step and evaluation batch against |Z| (bench.scale), each writing CSV and PNG."""
