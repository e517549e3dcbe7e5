"""The chaos run: run from the repository root as `python -m chaos.run` (see chaos/README.md)."""
