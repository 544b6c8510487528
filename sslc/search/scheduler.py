"""Early stopping of weak trials for a multi-objective search.

ASHA and the median rule compare one metric only, so they would stop every small model (its loss is higher by
nature) although small models are exactly what the Pareto front needs. Nothing in Ray or Optuna stops on
Pareto dominance, hence this small scheduler: at each rung a trial is stopped when enough earlier trials were
both no larger (MACs) and better (training loss) at the same rung, i.e. it is dominated already.
"""

from __future__ import annotations

from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class DominanceStopper(FIFOScheduler):
    def __init__(self, rungs: list[int], min_peers: int = 4, min_dominators: int = 2, margin: float = 0.0):
        """rungs: training steps at which trials are compared; a trial is stopped once `min_peers` trials have
        reached the rung and at least `min_dominators` of them dominate it (loss lower by more than `margin`)."""
        super().__init__()
        self.rungs = sorted(set(rungs))
        self.min_peers, self.min_dominators, self.margin = min_peers, min_dominators, margin
        self.records: dict[int, list[tuple[float, float]]] = {rung: [] for rung in self.rungs}
        self.passed: dict[str, set[int]] = {}
        self.stopped: set[str] = set()

    def decide(self, trial_key: str, step: int, macs: float, loss: float) -> bool:
        """Record the trial at every rung it just crossed; True when it should stop."""
        passed = self.passed.setdefault(trial_key, set())
        stop = False
        for rung in self.rungs:
            if step < rung or rung in passed:
                continue
            passed.add(rung)
            peers = self.records[rung]
            dominators = sum(1 for m, other in peers if m <= macs and other + self.margin < loss)
            peers.append((macs, loss))
            if len(peers) > self.min_peers and dominators >= self.min_dominators:
                stop = True
        return stop

    def on_trial_result(self, tune_controller, trial, result):
        if "train_loss" not in result or result.get("final"):
            return TrialScheduler.CONTINUE
        if self.decide(trial.trial_id, int(result["step"]), float(result["macs"]), float(result["train_loss"])):
            self.stopped.add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE
