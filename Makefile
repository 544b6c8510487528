# The two commands a newcomer runs: `make demo` (set up + a small real search, offline) and `make test`.
VENV := .venv/bin

.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/sslc-search --teacher random:hubert-base --data demo --budget 30GMACs \
		--trials 8 --steps 10 --crop-seconds 1 --batch-size 2

lint: setup
	$(VENV)/python -m ruff check sslc tests benchmarks

test: lint
	$(VENV)/python -m pytest
