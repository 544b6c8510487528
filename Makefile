# The two commands a newcomer runs: `make demo` (set up + a small real search, offline) and `make test`.
VENV := .venv/bin

.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/sslc-info --teacher random:hubert-base --latency-repeats 3

lint: setup
	$(VENV)/python -m ruff check sslc tests benchmarks

test: lint
	$(VENV)/python -m pytest
