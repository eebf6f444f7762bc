"""Causal language models: the cached-decoder session, the generation oracle, export/verify/bench/package flows."""
