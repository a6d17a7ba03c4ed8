"""Integration tests: real external components (SGLang server + router, Slurm)."""
