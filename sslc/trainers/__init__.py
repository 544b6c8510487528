"""Distillation trainers: short search trials, full resumable training, and the shared teacher-target cache."""

from sslc.trainers.cache import TeacherTargetCache, computation_count
from sslc.trainers.checkpoint import load_checkpoint, save_checkpoint
from sslc.trainers.config import TrainerConfig
from sslc.trainers.distill import FullTrainResult, ShortTrialResult, run_short_trial, train_full
from sslc.trainers.fingerprint import segments_fingerprint, teacher_fingerprint
from sslc.trainers.heads import PredictionHeads
from sslc.trainers.layer_map import default_layer_map, resolve_layer_map, spread_layers
from sslc.trainers.step import DistillationStep, StepOutcome
from sslc.trainers.target_batch import TargetBatch, TargetSource
from sslc.trainers.targets import LiveTeacherTargets, TeacherTargets

__all__ = [
    "DistillationStep",
    "FullTrainResult",
    "LiveTeacherTargets",
    "PredictionHeads",
    "ShortTrialResult",
    "StepOutcome",
    "TargetBatch",
    "TargetSource",
    "TeacherTargetCache",
    "TeacherTargets",
    "TrainerConfig",
    "computation_count",
    "default_layer_map",
    "load_checkpoint",
    "resolve_layer_map",
    "run_short_trial",
    "save_checkpoint",
    "segments_fingerprint",
    "spread_layers",
    "teacher_fingerprint",
    "train_full",
]
