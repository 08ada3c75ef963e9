"""An in-memory driver for fast engine tests."""
