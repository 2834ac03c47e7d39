"""Measurement tools: the HTTP load generator, the baselines it is compared with, and the benchmarks."""
