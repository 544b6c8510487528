"""Once-for-all distillation of an elastic student, and scoring its sub-networks on the shared weights.

`train_once_for_all` trains every size of an `ElasticStudent` at once with the sandwich rule: each step runs the
largest sub-network, the smallest and `random_per_step` sampled ones on the same batch, against the same fixed
teacher targets as the evaluation protocol (`sslc.protocol`), averages their distillation losses and takes one
optimizer step on the shared weights and the shared heads. It is the trainer's loop (`TrainingLoop`): resumable
from its checkpoint, progress bar, bf16 autocast on CUDA.

`score_subnetwork` then scores any sub-network on the shared weights with no training: the held-out protocol of
`score_student` (same targets, same crops, same averaging), in seconds.

Heads (`SharedHeads`): one per protocol target, at the teacher's width, shared by every sub-network. A thin
sub-network's channels are placed back at their teacher channels (pruned channels read as zero): its head is the
shared weight's columns at the channels it keeps (`ElasticStudent.residual_index`). They start as the identity,
so every full-width sub-network starts as a full-width student's `PredictionHeads` do, and a thin one as
`PredictionHeads(placement=residual_index)` do. Which sub-network layer predicts which target is the protocol's
layer map for a depth-n prefix (kept teacher layers 0..n-1), as `run_short_trial(kept_layers=...)` uses.

Which configs an `ElasticStudent` accepts: the first n layers (`layers == [0, ..., n-1]`), any heads / FFN units
/ CNN channels / hidden width, no low-rank ranks, no sparsity, no int8, and for every pruned kind the importance
criterion the elastic student was built with (`ElasticStudent.config_for` builds such configs; `sizes` checks
one). A config the sampler returns outside that is refused with a `ConfigError`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sslc.compress.config import CompressionConfig, ConfigError, config_key
from sslc.compress.elastic import ElasticStudent
from sslc.data import SegmentDataset
from sslc.errors import UserError
from sslc.models import EncoderConfig, EncoderOutput
from sslc.trainers.checkpoint import checkpoint_path, load_checkpoint
from sslc.trainers.config import TrainerConfig
from sslc.trainers.distill import (
    ReportCallback,
    Scorer,
    TrainingLoop,
    _fit_heads,
    _targets_for,
    full_run_steps,
    start_run,
)
from sslc.trainers.heads import PredictionHeads
from sslc.trainers.layer_map import LayerMap, resolve_layer_map
from sslc.trainers.step import DistillationStep, StepOutcome
from sslc.trainers.targets import TeacherTargets

KIND = "once-for-all"
ConfigSampler = Callable[[random.Random], CompressionConfig]


# ---- heads shared by every sub-network --------------------------------------------------------------------------
class SharedHeads(PredictionHeads):
    """One teacher-width head per protocol target (`targets`, 1-based teacher layers, in the protocol's order),
    starting as the identity. As a `PredictionHeads` it is the full elastic model's heads (hidden state t
    predicts target t); `for_subnetwork` gives the heads of any sub-network."""

    def __init__(self, targets: Sequence[int], dim: int):
        super().__init__([(int(t), int(t)) for t in targets], dim, dim)
        self.targets = [int(t) for t in targets]

    def for_subnetwork(self, layer_map: LayerMap, placement: Sequence[int] | None = None) -> SubNetworkHeads:
        """The heads of a sub-network whose hidden states follow `layer_map` (one pair per target) and whose
        channels are the teacher channels `placement` (ascending; None: all of them)."""
        return SubNetworkHeads(self, layer_map, placement)


class SubNetworkHeads(nn.Module):
    """A view of `SharedHeads` for one sub-network (no weights of its own): head i maps hidden state
    `layer_map[i][0]` through the shared head of target `layer_map[i][1]`, its weight's columns sliced to the
    sub-network's channels."""

    def __init__(self, shared: SharedHeads, layer_map: LayerMap, placement: Sequence[int] | None = None):
        super().__init__()
        self.shared = shared
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        unknown = [t for _, t in self.layer_map if t not in shared.targets]
        if unknown:
            raise ValueError(f"the shared heads predict targets {shared.targets}, not {unknown}")
        self.index = [shared.targets.index(t) for _, t in self.layer_map]
        dim = shared.heads[0].in_features
        placement = None if placement is None else [int(c) for c in placement]
        if placement is not None and placement == list(range(dim)):
            placement = None  # full width: the whole weight
        self.register_buffer("placement", None if placement is None else torch.tensor(placement), persistent=False)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, (s, _) in zip(self.index, self.layer_map):
            head = self.shared.heads[i]
            weight = head.weight
            if self.placement is not None:
                weight = weight.index_select(1, self.placement.to(weight.device))
            out.append(F.linear(hidden_states[s], weight, head.bias))
        return out


class SubNetwork(nn.Module):
    """The sub-network `config` of `elastic` as a model of its own (`model(waves, lengths)`), sharing its weights:
    what `DistillationStep` trains and evaluates."""

    def __init__(self, elastic: ElasticStudent, config: CompressionConfig):
        super().__init__()
        self.elastic, self.choice = elastic, config

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        return self.elastic(waveforms, lengths, config=self.choice)


def subnetwork_layer_map(elastic: ElasticStudent, config: CompressionConfig, targets: TeacherTargets,
                         trainer_config: TrainerConfig) -> LayerMap:
    """Which hidden state of the sub-network `config` predicts each protocol target: the protocol's map for the
    first n teacher layers (`target_layer_map` with kept layers 0..n-1)."""
    depth = elastic.sizes(config).depth
    return resolve_layer_map(None, list(range(depth)), depth, targets.depth, trainer_config.targets)


def _check_setup(elastic: ElasticStudent, targets: TeacherTargets, trainer_config: TrainerConfig) -> None:
    if trainer_config.layer_map is not None:
        raise UserError("an explicit layer_map fits one student depth; once-for-all training and sub-network "
                        "scores use the protocol's map for each depth (leave layer_map unset)")
    spec = elastic.config
    if (targets.depth, targets.dim) != (spec.num_layers, spec.embed_dim):
        raise UserError(f"the targets' teacher ({targets.depth} layers, width {targets.dim}) is not the elastic "
                        f"student's ({spec.num_layers} layers, width {spec.embed_dim})")


def make_shared_heads(elastic: ElasticStudent, targets: TeacherTargets, trainer_config: TrainerConfig) -> SharedHeads:
    """Fresh (identity) shared heads for the protocol targets of `trainer_config`."""
    full = subnetwork_layer_map(elastic, None, targets, trainer_config)
    return SharedHeads([t for _, t in full], elastic.config.embed_dim)


def _subnetwork_scorer(elastic, heads: SharedHeads, config, targets, heldout_data, trainer_config) -> Scorer:
    layer_map = subnetwork_layer_map(elastic, config, targets, trainer_config)
    sub_heads = heads.for_subnetwork(layer_map, elastic.residual_index(config))
    return Scorer.for_layer_map(SubNetwork(elastic, config), sub_heads, layer_map, targets, heldout_data,
                                trainer_config)


def score_subnetwork(
    elastic: ElasticStudent,
    heads: SharedHeads,
    config: CompressionConfig | None,
    targets: TeacherTargets,
    heldout_data: SegmentDataset,
    trainer_config: TrainerConfig,
    fit_heads_on: SegmentDataset | None = None,
) -> tuple[float, dict[str, float]]:
    """The held-out score of the sub-network `config` (None: the whole model) on the shared weights and heads,
    no training: (mean over targets, {target layer: loss}), by the protocol of `score_student`. Untrained, it is
    `score_student(elastic.extract(config), kept_layers=config.layers)` (thin: with the placement heads).

    `fit_heads_on` (training data): score with heads of the sub-network's own, fitted to the targets on its first
    training batches as a trial's heads start (`fit_heads_`), instead of the shared heads."""
    _check_setup(elastic, targets, trainer_config)
    if fit_heads_on is None:
        return _subnetwork_scorer(elastic, heads, config, targets, heldout_data, trainer_config).score()
    layer_map = subnetwork_layer_map(elastic, config, targets, trainer_config)
    model = SubNetwork(elastic, config)
    placement = elastic.residual_index(config)  # the placed start, as a trial's heads have it
    own_heads = PredictionHeads(layer_map, len(placement), targets.dim, placement)
    _fit_heads(model, own_heads, layer_map, _targets_for(targets, fit_heads_on, layer_map), fit_heads_on,
               trainer_config)
    return Scorer.for_layer_map(model, own_heads, layer_map, targets, heldout_data, trainer_config).score()


# ---- once-for-all training --------------------------------------------------------------------------------------
@dataclass
class OnceForAllResult:
    """status: "completed" | "stopped" (on_report asked to stop) | "nonfinite" (see `reason`). `curve` holds
    (step, mean sandwich loss since the previous report). The held-out scores (mean over targets, and by target)
    of the largest and smallest sub-networks are set only when completed."""

    status: str
    steps_done: int
    seconds_training: float
    curve: list[tuple[int, float]]
    largest_loss: float | None = None
    smallest_loss: float | None = None
    largest_by_target: dict[str, float] | None = None
    smallest_by_target: dict[str, float] | None = None
    reason: str | None = None
    checkpoint: str | None = None  # the last checkpoint written (None if the run wrote none)
    resumed_from_step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class _OnceForAllLoop(TrainingLoop):
    kind = KIND
    description = "once-for-all"

    def __init__(self, elastic: ElasticStudent, targets, train_data, heldout_data, config: TrainerConfig,
                 sample_config: ConfigSampler, smallest, largest, random_per_step: int, total_steps: int):
        _check_setup(elastic, targets, config)
        if random_per_step < 0:
            raise UserError(f"random_per_step must be >= 0, got {random_per_step}")
        start_run(config)
        self.config, self.elastic, self.targets, self.heldout_data = config, elastic, targets, heldout_data
        self.smallest, self.largest = self._checked(smallest, "smallest"), self._checked(largest, "largest")
        self.sample_config, self.random_per_step = sample_config, random_per_step
        self.rng = random.Random(config.seed)  # the config sampler's own generator, saved in checkpoints
        heads = make_shared_heads(elastic, targets, config)
        self.layer_maps: dict[int, LayerMap] = {}  # by depth
        self.placements: dict[int, list[int]] = {}  # by width
        # Every depth's map has the same teacher side (the targets), so one training source serves them all.
        train_targets = _targets_for(targets, train_data, self._layer_map(None))
        super().__init__(elastic, heads, train_targets, train_data, config, total_steps)

    def _checked(self, config: CompressionConfig, what: str) -> CompressionConfig:
        try:
            self.elastic.sizes(config)
        except ConfigError as error:
            raise ConfigError(f"{what}: {error}") from None
        return config

    def _layer_map(self, config: CompressionConfig | None) -> LayerMap:
        depth = self.elastic.sizes(config).depth
        if depth not in self.layer_maps:
            self.layer_maps[depth] = subnetwork_layer_map(self.elastic, config, self.targets, self.config)
        return self.layer_maps[depth]

    def _placement(self, config: CompressionConfig) -> list[int]:
        width = self.elastic.sizes(config).width
        if width not in self.placements:
            self.placements[width] = self.elastic.residual_index(config)
        return self.placements[width]

    def sandwich(self) -> list[CompressionConfig]:
        """This step's sub-networks: the largest, the smallest, then `random_per_step` drawn ones."""
        drawn = [self._checked(self.sample_config(self.rng), "sample_config returned a config that is not "
                                                            "a sub-network of the elastic student")
                 for _ in range(self.random_per_step)]
        return [self.largest, self.smallest, *drawn]

    def train_on(self, indices: list[int]) -> StepOutcome:
        waves, lengths, targets = self.batch(indices)
        configs = self.sandwich()
        total = None
        for n, config in enumerate(configs):
            layer_map = self._layer_map(config)
            heads = self.heads.for_subnetwork(layer_map, self._placement(config))
            loss, _, _ = DistillationStep(SubNetwork(self.elastic, config), heads, device=self.device).loss(
                waves, lengths, targets)
            if n == 0:  # dropped right before the first backward pass (see DistillationStep.train)
                self.optimizer.zero_grad(set_to_none=True)
            (loss / len(configs)).backward()  # one graph at a time: the gradients add up to the mean's
            total = loss.detach() if total is None else total + loss.detach()
        return self.step.update(total / len(configs), lengths)

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def model_state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {
            "elastic_config": self.elastic.config.to_json(),
            "criteria": dict(self.elastic.criteria),
            "elastic": self.elastic.state_dict(),
            "head_targets": list(self.heads.targets),
            "sandwich": self._sandwich_settings(),
            "config_rng": [version, list(internal), gauss],
        }

    def _sandwich_settings(self) -> dict:
        return {"largest": config_key(self.largest.to_dict()), "smallest": config_key(self.smallest.to_dict()),
                "random_per_step": self.random_per_step}

    def resume_problems(self, saved: dict) -> list[str]:
        changed = []
        if saved["elastic_config"] != self.elastic.config.to_json() or saved["criteria"] != self.elastic.criteria:
            changed.append("elastic student architecture or importance criteria")
        if saved["head_targets"] != self.heads.targets:
            changed.append("targets")
        old = saved["sandwich"]
        changed += [name for name, value in self._sandwich_settings().items() if old.get(name) != value]
        return changed

    def load_model_state(self, saved: dict) -> None:
        self.elastic.load_state_dict(saved["elastic"])
        version, internal, gauss = saved["config_rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    # ---- the run --------------------------------------------------------------------------------------------
    def train(self, state, on_report, progress: bool, checkpoint_dir: Path | None) -> OnceForAllResult:
        status, reason, written = self.run(state, on_report, progress, checkpoint_dir)
        result = OnceForAllResult(status, state.step, state.seconds, list(state.curve), reason=reason,
                                  resumed_from_step=state.resumed_from)
        if checkpoint_dir is not None:
            result.checkpoint = str(written or checkpoint_path(checkpoint_dir))
        if status == "completed":
            scores = {}
            for name, config in (("largest", self.largest), ("smallest", self.smallest)):
                scores[name] = _subnetwork_scorer(self.elastic, self.heads, config, self.targets,
                                                  self.heldout_data, self.config).score()
            bad = [f"{name} held-out loss is {loss}" for name, (loss, _) in scores.items() if not math.isfinite(loss)]
            if bad:
                result.status, result.reason = "nonfinite", "; ".join(bad)
            else:
                result.largest_loss, result.largest_by_target = scores["largest"]
                result.smallest_loss, result.smallest_by_target = scores["smallest"]
        return result


def train_once_for_all(
    elastic: ElasticStudent,
    targets: TeacherTargets,
    train_data: SegmentDataset,
    heldout_data: SegmentDataset,
    config: TrainerConfig,
    checkpoint_dir: str | os.PathLike | None,
    sample_config: ConfigSampler,
    smallest: CompressionConfig,
    largest: CompressionConfig,
    random_per_step: int = 2,
    progress: bool = True,
    on_report: ReportCallback | None = None,
) -> OnceForAllResult:
    """Train `elastic` (in place) and its shared heads once for all sizes, for `config.epochs` epochs (or
    `config.steps` steps), with the sandwich rule: each step averages the distillation losses of `largest`,
    `smallest` and `random_per_step` configs drawn by `sample_config(rng)` (`rng`: a `random.Random` seeded by
    `config.seed`, restored on resume) on the same batch, then takes one optimizer step.

    All configs must be sub-networks of `elastic` (see the module docstring). Checkpoints go to
    `checkpoint_dir` every `config.checkpoint_every` steps, on a stop and at the end; when it already holds one,
    training resumes from it exactly (weights, heads, optimizer, schedule, RNGs, data position), provided the
    same `sample_config` is given (it cannot be checked). `on_report(step, loss)` runs every `config.log_every`
    steps; returning True stops (after a checkpoint). `load_once_for_all` reads a checkpoint back."""
    total = full_run_steps(train_data, config)
    run = _OnceForAllLoop(elastic, targets, train_data, heldout_data, config, sample_config, smallest, largest,
                          random_per_step, total)
    state = run.resume_from(checkpoint_dir)
    return run.train(state, on_report, progress, Path(checkpoint_dir) if checkpoint_dir is not None else None)


# ---- reading a checkpoint back ---------------------------------------------------------------------------------
@dataclass
class OnceForAllCheckpoint:
    """What a once-for-all checkpoint holds: the elastic student and shared heads (eval mode, on the CPU), the
    steps done of the run's total, and its trainer settings."""

    elastic: ElasticStudent
    heads: SharedHeads
    step: int
    total_steps: int
    config: TrainerConfig

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def load_once_for_all(path: str | os.PathLike) -> OnceForAllCheckpoint:
    """The trained elastic student and shared heads of a `train_once_for_all` checkpoint (its directory, or the
    checkpoint file itself)."""
    path = Path(path)
    file = checkpoint_path(path) if path.is_dir() else path
    saved = load_checkpoint(file)
    if saved is None:
        raise UserError(f"no once-for-all checkpoint at {path}")
    if saved.get("kind") != KIND:
        raise UserError(f"{file} is not a once-for-all checkpoint (it is of a {saved.get('kind') or 'single-student'}"
                        " run)")
    elastic = ElasticStudent(EncoderConfig.from_json(saved["elastic_config"]), saved["criteria"])
    elastic.load_state_dict(saved["elastic"])
    spec = elastic.config
    heads = SharedHeads(saved["head_targets"], spec.embed_dim)
    heads.load_state_dict(saved["heads"])
    config = TrainerConfig.from_dict(saved["config"])
    return OnceForAllCheckpoint(elastic.eval(), heads.eval(), int(saved["step"]), int(saved["total_steps"]), config)
