"""A lightweight federated data-space connector (DSP 2025-1, ODRL policies in git)."""

__version__ = "0.1.0"
