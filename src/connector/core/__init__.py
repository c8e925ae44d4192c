"""Pure, synchronous, deterministic protocol and policy logic: no IO here."""
