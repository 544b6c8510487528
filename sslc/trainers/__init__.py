"""Distillation trainers: short search trials, full resumable training, and the shared teacher-target cache."""

from sslc.protocol import EvaluationProtocol, default_targets, mean_score, parse_targets, target_key
from sslc.trainers.cache import TeacherTargetCache
from sslc.trainers.checkpoint import load_checkpoint, save_checkpoint
from sslc.trainers.config import TrainerConfig
from sslc.trainers.distill import (
    FullTrainResult,
    ShortTrialResult,
    run_short_trial,
    score_at_start,
    score_student,
    train_full,
)
from sslc.trainers.fingerprint import segments_fingerprint
from sslc.trainers.heads import PredictionHeads
from sslc.trainers.layer_map import default_layer_map, resolve_layer_map, spread_layers, target_layer_map
from sslc.trainers.once_for_all import (
    OnceForAllCheckpoint,
    OnceForAllResult,
    SharedHeads,
    SubNetwork,
    SubNetworkHeads,
    load_once_for_all,
    make_shared_heads,
    score_subnetwork,
    subnetwork_layer_map,
    train_once_for_all,
)
from sslc.trainers.step import DistillationStep, StepOutcome
from sslc.trainers.target_batch import TargetBatch, TargetSource
from sslc.trainers.targets import LiveTeacherTargets, TeacherTargets

__all__ = [
    "DistillationStep",
    "EvaluationProtocol",
    "FullTrainResult",
    "LiveTeacherTargets",
    "OnceForAllCheckpoint",
    "OnceForAllResult",
    "PredictionHeads",
    "SharedHeads",
    "ShortTrialResult",
    "StepOutcome",
    "SubNetwork",
    "SubNetworkHeads",
    "TargetBatch",
    "TargetSource",
    "TeacherTargetCache",
    "TeacherTargets",
    "TrainerConfig",
    "default_layer_map",
    "default_targets",
    "load_checkpoint",
    "load_once_for_all",
    "make_shared_heads",
    "mean_score",
    "parse_targets",
    "resolve_layer_map",
    "run_short_trial",
    "save_checkpoint",
    "score_at_start",
    "score_student",
    "score_subnetwork",
    "segments_fingerprint",
    "spread_layers",
    "subnetwork_layer_map",
    "target_key",
    "target_layer_map",
    "train_full",
    "train_once_for_all",
]
