"""Stage 1, data: the corpora fetched and checked (fetch), tokenized (corpus) and clustered (clusters)."""
