"""Timing goals, run as ``python -m benchmarks.<name>`` (never as timed tests)."""
