"""Stage 2, training: every model's run (train for the neural ones, kn5 for KenLM), the models built from
settings (models), CUDA-graph steps (graphs), timing, progress lines, each run's curve (curves) and where
each run stands (status: ``./repro status``)."""
