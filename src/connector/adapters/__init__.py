"""Thin shells around the core: HTTP, storage, record sources."""
