"""What a study records about its search as a whole, written and read in one place.

The definition of what the search measures (teacher, data, space, objectives, budget, trainer, evaluation
protocol) is written once when a search starts and compared when it resumes; baselines, retrains and probe
results are added later by the commands that make them (a finished trial's own attrs are frozen in Optuna's
storage, the study's are not, hence one study attr per retrained or probed trial).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields

import optuna

from sslc.budget import Budget
from sslc.errors import UserError
from sslc.protocol import EvaluationProtocol

# The objectives a search can minimise, and each one's value as recorded on a trial, in the Pareto files and as
# the study's metric names (the dashboard's axis titles): the name says the unit.
OBJECTIVES = ("loss", "macs", "latency")
METRIC_NAMES = {"loss": "heldout_loss", "macs": "gmacs", "latency": "latency_ms"}

_SETTINGS, _SPACE, _TRAINER, _BUDGET, _PROTOCOL, _TEACHER, _BASELINES, _ANYTIME, _FINALISTS = (
    "settings", "space", "trainer", "budget", "protocol", "teacher", "baselines", "anytime", "finalists",
)
_RETRAIN_PREFIX, _PROBE_PREFIX = "retrain:", "probe:"
_V1_IDENTITY, _V1_OBJECTIVES = "identity", "objective_names"  # how sslc before the run record stored them


def retrain_key(number: int) -> str:
    return f"{_RETRAIN_PREFIX}{number}"


def probe_key(task: str, trial: int | str) -> str:
    return f"{_PROBE_PREFIX}{task}:{trial}"


def metric_names(objectives: list[str]) -> list[str]:
    return [METRIC_NAMES[name] for name in objectives]


@dataclass
class TeacherRecord:
    """The teacher a search compressed, as measured when it started."""

    spec: str | None = None  # what --teacher said
    description: str | None = None
    is_random: bool = False
    macs: int | None = None  # for the budget's seconds of audio
    macs_superb: int | None = None  # in the SUPERB profiler's convention
    params: int | None = None
    macs_breakdown: dict | None = None
    architecture: dict | None = None  # its EncoderConfig as a dict

    @classmethod
    def from_dict(cls, stored: dict | None) -> TeacherRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (stored or {}).items() if k in known})


@dataclass
class StudyRecord:
    """The search-wide record of one study."""

    settings: dict  # what sslc-search was given (SearchSettings as a dict)
    objectives: list[str]  # from OBJECTIVES, in the order of every trial's values
    space: dict | None = None  # the search space's definition (its file's content, not only its name)
    trainer: dict | None = None  # how each short trial was trained (TrainerConfig as a dict)
    budget: Budget | None = None  # None: an older study that recorded none
    protocol: dict | None = None  # EvaluationProtocol as a dict; None: made by an sslc before the protocol
    teacher: TeacherRecord = field(default_factory=TeacherRecord)
    baselines: list[BaselineRecord] | None = None  # None: not run yet
    retrains: dict[int, dict] = field(default_factory=dict)  # trial -> what sslc-retrain measured
    probes: dict[str, dict[int | str, dict]] = field(default_factory=dict)  # task -> {trial | "teacher": row}
    anytime: dict | None = None  # --mode anytime: what the once-for-all training did (None: not done yet)
    # sslc-search --finalists: which front points were retrained, their scores and the winner (None: no stage yet)
    finalists: dict | None = None

    @property
    def mode(self) -> str:
        return self.settings.get("mode", "trials")

    # ---- what the study measures ---------------------------------------------------------------------------
    def identity(self) -> dict:
        """What a resumed search must not change: scores under another definition would not be comparable."""
        budget = self.budget or Budget(max_macs=None, seconds=None)
        return {
            "teacher": self.settings.get("teacher"), "space": self.space, "objectives": self.objectives,
            "budget_macs": budget.max_macs, "budget_seconds": budget.seconds, "budget_convention": budget.convention,
            "data": self.settings.get("data"), "protocol": self.protocol, "trainer": self.trainer,
            # Studies from before --mode are trial searches; an anytime study's scores depend on its shared
            # weights' training too.
            "mode": self.settings.get("mode", "trials"), "anytime_steps": self.settings.get("anytime_steps"),
            # A study from before --fidelities is single-fidelity.
            "fidelities": self.settings.get("fidelities") or [1],
        }

    def check_same_search(self, new: StudyRecord, name: str) -> None:
        """UserError naming the first difference when `new` (a search being started on this study) would measure
        something else than what this study holds."""
        if self.protocol is None:
            # Scores from before the evaluation protocol summed a depth-dependent number of terms: never mix them.
            raise UserError(
                f"run '{name}' was made by an older sslc whose scores are not comparable with today's (no "
                "evaluation protocol recorded): use another --name"
            )
        stored, now = self.identity(), new.identity()
        changed = [k for k in stored if json.dumps(stored[k]) != json.dumps(now[k])]
        if not changed:
            return
        key = changed[0]
        before, after = stored[key], now[key]
        versions = key == "protocol" and before.get("version") != after.get("version")
        if key == "protocol" and before.get("targets") != after.get("targets"):
            before, after = f"targets {before['targets']}", f"targets {after['targets']}"
        elif versions:
            # e.g. version 1 held out 10% of the files, version 2 at most HELDOUT_SEGMENTS: other segments
            before, after = (f"protocol version {p.get('version')}, held-out set: {p.get('heldout_rule', '10% of the files')}"
                             for p in (before, after))
        values = f" ({before!r}, not {after!r})" if versions or len(repr(before)) + len(repr(after)) < 160 else ""
        raise UserError(f"run '{name}' was started with another {key}{values}: use another --name for a different search")

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.objectives)

    @property
    def evaluation_protocol(self) -> EvaluationProtocol | None:
        return EvaluationProtocol.from_dict(self.protocol) if self.protocol else None

    @property
    def budget_seconds(self) -> float:
        return float(self.budget.seconds) if self.budget is not None else 10.0

    # ---- reading and writing ----------------------------------------------------------------------------------
    @classmethod
    def read(cls, study: optuna.Study) -> StudyRecord:
        attrs = study.user_attrs
        old = attrs.get(_V1_IDENTITY) or {}
        objectives = attrs.get(_V1_OBJECTIVES) or _objectives_from_metrics(study)
        retrains, probes = {}, {}
        for key, value in attrs.items():
            if not isinstance(value, dict):
                continue
            if key.startswith(_RETRAIN_PREFIX) and key[len(_RETRAIN_PREFIX):].isdigit():
                retrains[int(key[len(_RETRAIN_PREFIX):])] = value
            elif key.startswith(_PROBE_PREFIX):
                task, _, which = key[len(_PROBE_PREFIX):].partition(":")
                probes.setdefault(task, {})[int(which) if which.isdigit() else which] = value
        stored_budget = attrs.get(_BUDGET) or (
            {"max_macs": old["budget_macs"], "seconds": old.get("budget_seconds", 10.0)} if "budget_macs" in old else None
        )
        budget = Budget(**stored_budget) if stored_budget else None
        return cls(
            settings=dict(attrs.get(_SETTINGS) or {}), objectives=list(objectives),
            space=attrs.get(_SPACE, old.get("space")), trainer=attrs.get(_TRAINER, old.get("trainer")),
            budget=budget, protocol=attrs.get(_PROTOCOL, old.get("protocol")),
            teacher=TeacherRecord.from_dict(attrs.get(_TEACHER)),
            baselines=None if attrs.get(_BASELINES) is None else [BaselineRecord.from_dict(b) for b in attrs[_BASELINES]],
            retrains=retrains, probes=probes, anytime=attrs.get(_ANYTIME), finalists=attrs.get(_FINALISTS),
        )

    @staticmethod
    def is_empty(study: optuna.Study) -> bool:
        """True for a study no search has written its definition on yet."""
        return _SETTINGS not in study.user_attrs and _V1_IDENTITY not in study.user_attrs

    def write_definition(self, study: optuna.Study) -> None:
        """At the start of a search: the definition, the settings of this run and the teacher."""
        budget = self.budget.to_dict() if self.budget is not None else None
        for key, value in ((_SETTINGS, self.settings), (_SPACE, self.space), (_TRAINER, self.trainer),
                           (_BUDGET, budget), (_PROTOCOL, self.protocol), (_TEACHER, asdict(self.teacher))):
            study.set_user_attr(key, value)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard titles axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(self.metric_names)


def _objectives_from_metrics(study: optuna.Study) -> list[str]:
    by_metric = {metric: name for name, metric in METRIC_NAMES.items()}
    names = study.metric_names
    if names and all(n in by_metric for n in names):
        return [by_metric[n] for n in names]
    return list(OBJECTIVES[: len(study.directions)])


@dataclass
class BaselineRecord:
    """One simple baseline (uniform pruning, DistilHuBERT-like), trained and scored like a trial; status
    "infeasible" with no scores when it was over budget and not trained."""

    name: str
    config: dict
    macs: int
    params: int
    status: str
    within_budget: bool
    heldout_loss: float | None = None
    heldout_loss_by_target: dict | None = None
    latency_ms: float | None = None
    macs_superb: int | None = None
    latency_measurement: dict | None = None  # how its latency was timed (`LatencyResult.conditions`)
    train_device: str | None = None  # the device and precision it trained on, as the trials
    # Multi-fidelity search: a baseline trains through every rung (its loss is the top one's, as the front's).
    fidelity: int | None = None
    heldout_loss_by_fidelity: dict | None = None

    @classmethod
    def measured(cls, name: str, config: dict, macs: int, params: int, result: dict, within_budget: bool,
                 macs_superb: int | None = None) -> BaselineRecord:
        """From what training and measuring it returned (`train_and_measure`'s result)."""
        return cls(name, config, macs, params, result["status"], within_budget, result.get("heldout_loss"),
                   result.get("heldout_loss_by_target"), result.get("latency_ms"), macs_superb,
                   result.get("latency_measurement"), result.get("train_device"), result.get("fidelity"),
                   {str(f): v for f, v in result.get("heldout_loss_by_fidelity_pairs") or []} or None)

    @classmethod
    def from_dict(cls, row: dict) -> BaselineRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


def record_baselines(study: optuna.Study, baselines: list[BaselineRecord]) -> None:
    study.set_user_attr(_BASELINES, [asdict(b) for b in baselines])


def record_anytime(study: optuna.Study, summary: dict) -> None:
    study.set_user_attr(_ANYTIME, summary)


def record_trial_devices(study: optuna.Study, devices: dict) -> None:
    """What this run's trials and baselines reserve in Ray (--gpus-per-trial resolved), and why."""
    study.set_user_attr("trial_devices", devices)


def record_retrain(study: optuna.Study, number: int, summary: dict) -> None:
    study.set_user_attr(retrain_key(number), summary)


def record_probe(study: optuna.Study, task: str, trial: int | str, row: dict) -> None:
    study.set_user_attr(probe_key(task, trial), row)


def record_finalists(study: optuna.Study, finalists: dict) -> None:
    """The finalist stage's choice and result (`sslc.search.finalists`); each finalist's retrain and probe rows
    are recorded beside it as every retrain and probe is (`record_retrain`, `record_probe`)."""
    study.set_user_attr(_FINALISTS, finalists)
