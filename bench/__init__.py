"""Benchmarks: raw data-channel numbers and the hotlink benchmark harness."""
