"""Stage 3, reporting: the paper's tables and figures beside ours (report), the front page (frontpage) and
what each recipe difference costs (fidelity)."""
