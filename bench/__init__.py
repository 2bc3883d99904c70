"""Benchmarks: our gateway next to vLLM's own server, the gateway's overhead,
recovery timings, and the tool-calling accuracy harness.

``python -m bench`` (``make bench``) writes ``docs/benchmarks/``; numbers are
reported against the design's targets, never asserted.
"""
