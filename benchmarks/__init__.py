"""Benchmarks of the native core against the pure-Python reference."""
