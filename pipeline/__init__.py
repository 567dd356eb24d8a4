"""The reproduction's machinery around the models: data, Brown clusters, run configs, the training
loop, KenLM runs, tables and figures, provenance, and the GPU-node bundle.  Imports hmm/ (the
paper's model) and baselines/ (FF, LSTM, KenLM); nothing imports it but bench/ and the workflow."""
