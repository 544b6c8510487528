"""Early stopping and promotion of trials for a multi-objective search, as Ray Tune schedulers.

ASHA and the median rule compare one metric only, so they would stop every small model (its loss is higher by
nature) although small models are exactly what the Pareto front needs; Optuna's pruners (SuccessiveHalving,
Hyperband) do not work in a multi-objective study at all (`Trial.report` raises there). Nothing in Ray or Optuna
stops or promotes on Pareto dominance, hence two small rules of our own in Tune's scheduler API:

- `DominanceStopper`: within a trial's training, at each rung it is stopped when enough earlier trials were both
  no larger (MACs) and better (training loss) at the same rung, i.e. it is dominated already; the warm start's
  trials are never stopped (they still count as peers); a resumed search's peers include the trials trained
  before it (read from the study), as its promotions do.
- `ParetoHalving` (--fidelities 1,3,9): asynchronous successive halving (ASHA, Li et al. 2020) made
  Pareto-aware as MO-ASHA does (Schmucker et al. 2021: NSGA-II's selection at each rung). A trial scored on the
  held-out set at a rung goes on training, in its own process, to the next rung only when it is among the top
  ceil(n / eta) of the n trials scored at that rung so far, in NSGA-II's crowded order on (held-out loss, MACs):
  non-dominated rank first, then crowding distance within the rank (a front's ends first, then the points with
  the most room around them), then lower loss. The rank alone would not halve: MACs differ between nearly all
  trials, so most of a rung's trials are non-dominated (with rank only, 12 of 15 trials went on to 9x in
  `benchmarks/fidelity_gain.py`). The first trial at a rung always goes on, as in Ray's ASHA, which also decides
  at once rather than pausing trials until enough peers arrive.
"""

from __future__ import annotations

import math

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sslc.runs.trials import non_dominated_ranks


class DominanceStopper(FIFOScheduler):
    def __init__(self, rungs: list[int], min_peers: int = 4, min_dominators: int = 2, margin: float = 0.0,
                 peers: list[tuple[int, float, float]] = ()):
        """rungs: training steps at which trials are compared; a trial is stopped once `min_peers` trials have
        reached the rung and at least `min_dominators` of them dominate it (loss lower by more than `margin`).
        peers: (rung, training loss, MACs) of the trials earlier runs of the study trained (`stopping_history`):
        a resumed search stops trials as the first run would have, not as if no trial had been trained."""
        super().__init__()
        self.rungs = sorted(set(rungs))
        self.min_peers, self.min_dominators, self.margin = min_peers, min_dominators, margin
        self.records: dict[int, list[tuple[float, float]]] = {rung: [] for rung in self.rungs}
        for rung, loss, macs in peers:
            if rung in self.records:
                self.records[rung].append((macs, loss))
        self.passed: dict[str, set[int]] = {}
        self.stopped: set[str] = set()

    def decide(self, trial_key: str, step: int, macs: float, loss: float, protected: bool = False) -> bool:
        """Record the trial at every rung it just crossed; True when it should stop (never when `protected`: it
        is recorded as a peer, and trains to its end)."""
        passed = self.passed.setdefault(trial_key, set())
        stop = False
        for rung in self.rungs:
            if step < rung or rung in passed:
                continue
            passed.add(rung)
            peers = self.records[rung]
            dominators = sum(1 for m, other in peers if m <= macs and other + self.margin < loss)
            peers.append((macs, loss))
            if len(peers) > self.min_peers and dominators >= self.min_dominators and not protected:
                stop = True
        return stop

    def on_trial_result(self, tune_controller, trial, result):
        if "train_loss" not in result or result.get("final"):
            return TrialScheduler.CONTINUE
        # The warm start's shapes always train to the end: they are what the search must beat, and the CNN-cut
        # ones are exactly the students whose early training loss is worst (every layer above a narrowed CNN
        # re-learns first) and whose retrained score is best (benchmarks/anchor_margin.py at 55%: all four were
        # stopped here, none retrained).
        protected = bool((trial.config or {}).get("warm_start"))
        if self.decide(trial.trial_id, int(result["step"]), float(result["macs"]), float(result["train_loss"]),
                       protected):
            self.stopped.add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


# The key of a trial's report scored at a rung that is not its last: the fidelity (a multiple of --steps).
RUNG_FIDELITY = "rung_fidelity"


class ParetoHalving(DominanceStopper):
    """Successive halving with promotion on non-dominated rank (module docstring), plus `DominanceStopper`'s
    stopping within a rung (`rungs`, `stopping_rule`)."""

    def __init__(self, eta: int, history: list[tuple[int, float, float]] = (), rungs: list[int] = (),
                 peers: list[tuple[int, float, float]] = (), **stopping_rule):
        """history: (fidelity, held-out loss, MACs) of the rungs earlier runs of the study scored (a resumed
        search decides as the first run would have); peers: the same for early stopping (`DominanceStopper`)."""
        super().__init__(list(rungs), peers=peers, **stopping_rule)
        self.eta = eta
        self.scored: dict[int, list[tuple[float, float]]] = {}
        for fidelity, loss, macs in history:
            self.scored.setdefault(fidelity, []).append((loss, macs))

    def promote(self, fidelity: int, loss: float, macs: float) -> bool:
        """Record a trial scored at `fidelity`; True when it goes on to the next rung."""
        peers = self.scored.setdefault(fidelity, [])
        peers.append((loss, macs))
        order = crowded_order(peers)
        return order.index(len(peers) - 1) < math.ceil(len(peers) / self.eta)

    def on_trial_result(self, tune_controller, trial, result):
        if RUNG_FIDELITY not in result:
            return super().on_trial_result(tune_controller, trial, result)
        if self.promote(int(result[RUNG_FIDELITY]), float(result["heldout_loss"]), float(result["macs"])):
            return TrialScheduler.CONTINUE
        self.stopped.add(trial.trial_id)  # ended at this rung, scored: the searcher records it complete there
        return TrialScheduler.STOP


def crowded_order(points: list[tuple[float, float]]) -> list[int]:
    """Indices of `points` (minimised objectives) best first by NSGA-II's crowded comparison: non-dominated rank,
    then crowding distance within the rank (larger first; a front's ends are infinitely far), then the first
    objective, then arrival. Hand-written beside `non_dominated_ranks`: Optuna's crowding distance is private."""
    ranks = non_dominated_ranks(points)
    crowding = [0.0] * len(points)
    for rank in set(ranks):
        front = [i for i, r in enumerate(ranks) if r == rank]
        for axis in range(2):
            ordered = sorted(front, key=lambda i: points[i][axis])
            span = points[ordered[-1]][axis] - points[ordered[0]][axis]
            crowding[ordered[0]] = crowding[ordered[-1]] = math.inf
            for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
                if span > 0:
                    crowding[here] += (points[after][axis] - points[before][axis]) / span
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowding[i], points[i][0], i))
