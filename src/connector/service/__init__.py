"""Async orchestration: load record, core step, persist with outbox, dispatch."""
