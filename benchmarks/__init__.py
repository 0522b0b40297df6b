"""Benchmarks of a generated project against the setups researchers would use instead."""
