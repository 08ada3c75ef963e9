"""Backups: a content-addressed chunk store with one manifest per backup, and retention."""
