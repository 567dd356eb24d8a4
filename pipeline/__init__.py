"""The reproduction's machinery around the models, one folder per stage (each imports only the stages
before it and the shared modules here):

    data/       fetch and check the corpora, tokenize them, Brown clusters
    training/   train a run (neural models, KenLM), build models, its curve
    reporting/  tables, figures, the front page, the recipe comparison
    node/       the offline GPU node: bundle, job, kernel check, import

Shared by all: config (settings, runs, recipes), profiles (the config snakemake would use for a profile),
authors (their cluster files, pinned), provenance, integrity (sha256 records), files (atomic writes),
intervals (seed and bootstrap intervals), lifetime (children die with their parent) and snakemake_args (the
venv's snakemake: targets anywhere).
Imports hmm/ (the paper's model) and baselines/ (FF, LSTM, KenLM); nothing imports it but bench/
and the workflow."""
