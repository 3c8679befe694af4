"""Benchmarks that run a real EchoPanel server on real speech: ``python -m bench.latency``, ``python -m bench.soak``."""
