# The two commands a newcomer runs: `make demo` (set up + a small real search, offline) and `make test`.
VENV := .venv/bin
# The tests run in their own venv holding only what pyproject.toml declares (see scripts/setup.sh --isolated).
TEST_VENV := .venv-test/bin

.PHONY: setup setup-test demo test lint

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --isolated

demo: setup
	$(VENV)/sslc-search --teacher random:hubert-base --data demo --budget 30GMACs \
		--trials 8 --steps 10 --crop-seconds 1 --batch-size 2

lint: setup-test
	$(TEST_VENV)/python -m ruff check sslc tests benchmarks

# With PostgreSQL's server binaries installed, scripts/test.sh also runs the tests against a real server.
test: lint
	bash scripts/test.sh $(PYTEST_ARGS)
