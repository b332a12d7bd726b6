"""Benchmarks: ``python -m benchmarks <solver|sim|live>`` (see benchmarks/README.md)."""
