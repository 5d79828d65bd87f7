"""Benchmarks: figures, not pass/fail tests (docs/benchmarks.md)."""
