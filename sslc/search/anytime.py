"""`--mode anytime`: one elastic student distilled once for every size, then each config scored on its shared weights.

The elastic student (`sslc.compress.elastic`) holds the teacher's weights in importance order, so every config of
an elastic space (`SearchSpace.elastic_problems`) is a prefix of it. It is trained once with the sandwich rule
(`train_once_for_all`: the largest config, the smallest and a few random ones within the budget, every step,
against the protocol's fixed teacher targets), resumable from `<run_dir>/anytime/`. The trials then run exactly as
in a trial search (the same searcher, budget rules, study, Pareto files and report), except that a trial scores
its config on the shared weights by the held-out protocol instead of training it (`SharedWeights.measure`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from sslc.budget import Budget
from sslc.compress import CompressionConfig
from sslc.compress.elastic import ElasticStudent, make_elastic
from sslc.errors import UserError
from sslc.metrics import count_params_from_config, macs_in_convention
from sslc.models import EncoderConfig
from sslc.runs.record import ANYTIME_DIR
from sslc.search.inputs import RunInputs
from sslc.spaces import SearchSpace
from sslc.trainers import TeacherTargets, TrainerConfig
from sslc.trainers.once_for_all import SharedHeads, load_once_for_all, score_subnetwork, train_once_for_all

RANDOM_PER_STEP = 2  # sandwich rule: configs drawn at random each step, besides the largest and the smallest
SAMPLE_TRIES = 1000  # random draws to find a config within the budget (the search refuses budgets few configs fit)


@dataclass
class SharedWeights:
    """The once-for-all trained elastic student and its heads; shipped to the trials with their setup."""

    elastic: ElasticStudent
    heads: SharedHeads

    # Pickled (Ray's object store) as state dicts: a weight-normed module pickles only through its state dict.
    def __getstate__(self) -> dict:
        return {
            "config": self.elastic.config.to_dict(), "criteria": dict(self.elastic.criteria),
            "elastic": self.elastic.state_dict(), "targets": list(self.heads.targets), "heads": self.heads.state_dict(),
        }

    def __setstate__(self, state: dict) -> None:
        config = EncoderConfig.from_dict(state["config"])
        self.elastic = ElasticStudent(config, state["criteria"])
        self.elastic.load_state_dict(state["elastic"])
        self.heads = SharedHeads(state["targets"], config.embed_dim)
        self.heads.load_state_dict(state["heads"])
        self.elastic.eval()
        self.heads.eval()

    def in_its_order(self, config: CompressionConfig) -> CompressionConfig:
        """`config` with this elastic student's importance criteria (a baseline's sizes, ranked as it ranks them)."""
        return replace(config, **{f"{kind}_importance": c for kind, c in self.elastic.criteria.items()})

    def student(self, config: CompressionConfig):
        """The sub-network `config` as an ordinary student (its own copy of the weights)."""
        return self.elastic.extract(config)

    def score(self, config: CompressionConfig, targets: TeacherTargets, train, heldout, trainer: TrainerConfig):
        """(held-out score, {target layer: loss}) of `config` on the shared weights, by the protocol, without
        training. Its heads are fitted to it on the first training batches of `train`, as every trial's heads
        start: a score then means what a trial's means (measured: it also ranks configs as their short trials do,
        Kendall tau 0.97 against 0.85 with the shared heads; benchmarks/anytime_front.py)."""
        return score_subnetwork(self.elastic, self.heads, config, targets, heldout, trainer, fit_heads_on=train)


def check_space(space: SearchSpace) -> None:
    problems = space.elastic_problems()
    if problems:
        raise UserError(
            f"space '{space.name}' cannot be searched with --mode anytime ({'; '.join(problems)}): one elastic "
            "student serves only prefixes of itself; use --space anytime or a space file like it"
        )


def anytime_dir(run_dir: Path) -> Path:
    return Path(run_dir) / ANYTIME_DIR


def _criteria(space: SearchSpace) -> dict[str, str]:
    """The importance order of the elastic student: the space's fixed criteria (one order serves every size)."""
    return {kind: space.knobs[f"{kind}_importance"].fixed for kind in ("head", "ffn", "conv", "hidden")}


def train_shared_weights(
    context: RunInputs,
    space: SearchSpace,
    budget: Budget,
    trainer: TrainerConfig,
    steps: int,
    run_dir: Path,
    progress: bool = True,
) -> tuple[SharedWeights | None, dict]:
    """Distil the elastic student once for all sizes (resuming `<run_dir>/anytime/`); (weights, summary).

    Weights are None when the training was interrupted (Ctrl-C, after a checkpoint): the search then stops, and
    running it again resumes the training."""
    teacher_config = context.teacher.config
    criteria = _criteria(space)
    data = context.importance_batches() if "data" in criteria.values() else None
    elastic = make_elastic(context.teacher, data=data, cache_dir=context.cache_dir / "importance", criteria=criteria)

    def fits(config: CompressionConfig) -> bool:
        arch = config.student_architecture(teacher_config)
        return not budget.violations(macs_in_convention(arch, budget.convention, budget.seconds),
                                     count_params_from_config(arch))

    def sample_config(rng: random.Random) -> CompressionConfig:
        """A config of the space within the budget (the sizes the search will ask about)."""
        for _ in range(SAMPLE_TRIES):
            config = space.sample(teacher_config, rng)
            if fits(config):
                return config
        return space.smallest(teacher_config)

    schedule = replace(
        trainer, steps=steps, log_every=max(1, steps // 50), checkpoint_every=max(1, min(500, steps // 10)),
        num_threads=None,
    ).validate()
    try:
        result = train_once_for_all(
            elastic, context.targets(), context.data.train, context.data.heldout, schedule, anytime_dir(run_dir),
            sample_config, space.smallest(teacher_config), space.largest(teacher_config), RANDOM_PER_STEP,
            progress=progress,
        )
    except KeyboardInterrupt:
        return None, {"status": "stopped"}
    if result.status == "stopped":
        return None, {"status": "stopped"}
    if result.status != "completed":
        raise UserError(f"the once-for-all training failed ({result.status}): {result.reason}")
    trained = load_once_for_all(anytime_dir(run_dir))
    summary = {
        "status": "completed", "steps": result.steps_done, "random_per_step": RANDOM_PER_STEP,
        "criteria": criteria, "trainer": schedule.to_dict(), "seconds_training": result.seconds_training,
        "largest_heldout_loss": result.largest_loss, "smallest_heldout_loss": result.smallest_loss,
    }
    return SharedWeights(trained.elastic, trained.heads), summary
