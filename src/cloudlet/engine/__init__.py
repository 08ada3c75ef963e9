"""Use cases: create, start, stop ... validation, capacity, locks, state machine, operations."""
