"""Shared fixtures: one tiny real search per test session, read by the report, retrain and export tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: tiny models gain nothing from intra-op threads on a shared 2-core
    machine, only overhead. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of a real search on the tiny random teacher (~20 s on 2 cores).

    A 40% budget makes the random sampler propose over-budget configs (infeasible trials; the model-based samplers'
    start-up is drawn within the budget, so they would propose none in 5 trials), and a lenient stopping rule lets
    the scheduler stop some (pruned), so the report sees every kind of trial. Do not modify it: tests that write
    to a run (retrain) take `copy_run()`.
    """
    from sslc.search.runner import SearchSettings, run_search

    root = tmp_path_factory.mktemp("tiny-run")
    settings = SearchSettings(
        teacher="random:tiny", data="demo", budget="40%", trials=5, steps=4, batch_size=4, crop_seconds=1.0,
        name="tiny", run_dir=root / "tiny", latency_repeats=1, stopping_rule={"min_peers": 2, "min_dominators": 1},
        quiet=True, sampler="random",
    )
    result = run_search(settings)
    assert not result.interrupted and result.pareto, "the tiny search must finish with a Pareto front"
    return result.run_dir


@pytest.fixture(scope="session")
def copy_run(tiny_run, tmp_path_factory):
    """copy_run(name) -> a private copy of the tiny run (its own study.db), for tests that write to a run."""

    def make(name: str = "copy") -> Path:
        target = tmp_path_factory.mktemp(name) / "run"
        # study.txt names the original database; without it the copy resolves its own study.db.
        shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns("ray", "study.txt", "report.html"))
        return target

    return make


def pytest_addoption(parser):
    # .ci/run starts a throwaway server (scripts/pg-test-server.sh) and passes its URL here.
    parser.addoption("--postgres-url", default=None,
                     help="URL of a PostgreSQL database the tests may fill (runs the PostgreSQL tests)")


@pytest.fixture(scope="session")
def postgres_url(request) -> str:
    """A real PostgreSQL database (--postgres-url); the tests that need one skip without it."""
    url = request.config.getoption("--postgres-url")
    if not url:
        pytest.skip("no PostgreSQL server: pass --postgres-url=postgresql://... (.ci/run starts one)")
    return url


@pytest.fixture
def spy(monkeypatch):
    """spy(module, "function") -> a list that gets one entry per call of `module.function` (which still runs):
    how tests see that a cache was hit, without counters in the code under test."""

    def install(module, name: str) -> list:
        calls, original = [], getattr(module, name)

        def counted(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
        return calls

    return install
