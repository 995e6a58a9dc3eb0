"""Benchmarks: each prints a table and writes JSON. Not tests."""
