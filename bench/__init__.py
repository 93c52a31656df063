"""Benchmarks and the chaos harness, each a script printing its figures."""
