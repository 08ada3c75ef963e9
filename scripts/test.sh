#!/bin/sh
# Set up everything the tests need, then lint, type-check and run the whole suite
# (unit tests and real-QEMU integration tests).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh --dev
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
MYPYPATH=bench .venv/bin/mypy bench
exec .venv/bin/python -m pytest "$@"
