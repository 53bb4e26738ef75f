"""Ground truth for memory forensics: manifests of every chunk, corpora, scores, volatility3."""
