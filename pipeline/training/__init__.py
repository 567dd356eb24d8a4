"""Stage 2, training: every model's run (train for the neural ones, kn5 for KenLM), the models built from
settings (models), CUDA-graph steps (graphs), timing, progress lines and each run's curve (curves)."""
