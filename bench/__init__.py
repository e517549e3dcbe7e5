"""The bench: run from the repository root as `python -m bench.run` (see bench/README.md)."""
