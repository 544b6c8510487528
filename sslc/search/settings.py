"""`SearchSettings`: everything `sslc-search` takes, with its defaults and its checks, in one place.

Light (no torch, Ray or Optuna): the CLI builds its options from these defaults and runs `check()` before the
heavy imports, so a typo fails in a fraction of a second; `run_search` runs the same checks for callers from
Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sslc.budget import parse_budget, parse_count
from sslc.errors import UserError
from sslc.protocol import parse_targets
from sslc.search.sizes import parse_size

# The objectives a search can minimise (see sslc.runs.study), in the combinations offered.
OBJECTIVE_SETS = ("loss,macs", "loss,latency", "loss,macs,latency")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
# "trials": every config is distilled in its own short trial. "anytime": one elastic student is distilled once
# (once-for-all, the sandwich rule) and every config is scored on its shared weights, without training.
MODES = ("trials", "anytime")
ANYTIME_SPACE = "anytime"  # the default space of --mode anytime: only what an elastic student can share
MACS_CONVENTIONS = ("seconds", "superb")  # = sslc.metrics.MACS_CONVENTIONS (not imported: it would pull in torch)
DEMO_DATA = "demo"
AUTO = "auto"  # --gpus-per-trial auto: as many trials per GPU as fit by measured memory, 0 where no GPU is visible
LATENCY_DEVICES = ("cpu", "cuda")  # where a student's latency is measured (the device it is meant for)
# The presets ship as files beside the space module; listed from disk so `--help` needs no torch import.
PRESET_DIR = Path(__file__).resolve().parents[1] / "spaces" / "presets"


def parse_gpus_per_trial(text: str) -> float | str:
    """--gpus-per-trial: "auto" or a number of GPUs (a share of one below 1)."""
    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--gpus-per-trial must be '{AUTO}' or a number of GPUs, got {text!r}") from None


# Successive halving's reduction factor: at each rung, the top 1/ETA of the trials that reached it go on.
FIDELITY_ETA = 3


def parse_fidelities(text: str) -> list[int]:
    """--fidelities: the rungs of a multi-fidelity search, as multiples of --steps ("1,3,9"); "1": one rung,
    every trial trains --steps and stops (the single-fidelity search)."""
    try:
        rungs = [int(part) for part in text.split(",")]
    except ValueError:
        rungs = []
    if not rungs or rungs[0] != 1 or any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise UserError(f"--fidelities must be increasing whole multiples of --steps starting at 1, such as "
                        f"1,3,9 (or 1: single fidelity), got {text!r}")
    return rungs


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@dataclass
class SearchSettings:
    """Everything `sslc-search` takes; these defaults are the CLI's."""

    budget: str
    teacher: str = "random:hubert-base"
    data: str = DEMO_DATA
    budget_seconds: float = 10.0
    # How --budget counts MACs: "seconds" (one waveform of budget_seconds) or "superb" (the published tables'
    # sum over SUPERB's 32 LibriSpeech utterances, e.g. HuBERT Base 1669 G).
    macs_convention: str = "seconds"
    max_params: str | None = None
    max_latency_ms: float | None = None
    space: str = "combined"
    mode: str = "trials"
    trials: int = 20
    steps: int = 100
    # Multi-fidelity search (successive halving): the rungs, as multiples of `steps`; [1] is single fidelity.
    fidelities: list[int] = field(default_factory=lambda: [1])
    # --mode anytime: once-for-all distillation steps of the elastic student (None: 10 x steps).
    anytime_steps: int | None = None
    batch_size: int = 4
    crop_seconds: float = 2.0
    lr: float = 2e-4
    # Teacher layers every candidate is scored on (mean over them): "default" (1/3, 2/3, end), "all", "4,8,12".
    targets: str = "default"
    name: str | None = None
    run_dir: Path | None = None
    storage: str | None = None
    objectives: list[str] = field(default_factory=lambda: ["loss", "macs"])
    sampler: str = "gp"
    ray_address: str | None = None
    # Where Ray Tune keeps its experiment state and trial logs (default <run_dir>/ray): on a multi-node cluster,
    # a shared path or a URI such as s3://bucket/dir keeps the logs of trials that ran on other nodes. Trial
    # files (students, configs, errors) come back through Ray either way.
    storage_path: str | None = None
    cpus_per_trial: float = 1.0
    # A number: the GPUs (or share of one) each trial reserves in Ray; "auto": see AUTO (sslc.search.devices).
    gpus_per_trial: float | str = AUTO
    concurrency: int | None = None
    early_stopping: bool = True
    # A trial is stopped at a rung once `min_peers` trials reached it and `min_dominators` of them dominate it.
    stopping_rule: dict = field(default_factory=lambda: {"min_peers": 4, "min_dominators": 2})
    baselines: bool = True
    # Ask the anchor families' shapes at the budget (as the space's nearest configs) as the first trials.
    warm_start: bool = True
    report: bool = True  # the CLI writes the HTML report after the search
    latency_repeats: int = 3
    latency_device: str = "cpu"
    # The most disk the teacher-target cache may take (e.g. "20GB"; None: the free disk); training targets that
    # would not fit are computed live on each trial's device instead (see sslc.search.plan).
    cache_limit: str | None = None
    seed: int = 0
    quiet: bool = False
    # The pick after retraining (sslc.search.finalists): K trials near the budget retrained by a recipe
    # at the end of the search (None: no such stage), optionally probed; the winner is named in pareto.json.
    finalists: int | None = None
    finalist_recipe: str = "quick"
    finalist_steps: int | None = None  # None: the recipe's
    probe_data: str | None = None  # labelled audio for sslc-probe's probe of the finalists
    probe_heldout: str | None = None  # None: a fixed share of probe_data's speakers
    probe_task: str = "ctc"
    probe_units: str = "chars"
    probe_epochs: int = 20

    def check(self) -> None:
        """What can be checked without torch or Ray; UserError naming the option."""
        parse_budget(self.budget)
        parse_targets(self.targets)  # its range needs the teacher: checked again once it is loaded
        if self.max_params is not None:
            parse_count(self.max_params)
        if self.cache_limit is not None:
            parse_size(self.cache_limit)
        if ",".join(self.objectives) not in OBJECTIVE_SETS:
            raise UserError(f"objectives must be one of {', '.join(OBJECTIVE_SETS)}, got {','.join(self.objectives)}")
        if self.macs_convention not in MACS_CONVENTIONS:
            raise UserError(f"--macs-convention must be one of {', '.join(MACS_CONVENTIONS)}, got {self.macs_convention!r}")
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        parse_fidelities(",".join(str(f) for f in self.fidelities))
        if self.fidelities != [1] and self.mode == "anytime":
            raise UserError("--fidelities is for --mode trials (the anytime mode trains no trial)")
        if self.anytime_steps is not None and self.mode != "anytime":
            raise UserError("--anytime-steps is for --mode anytime")
        if self.gpus_per_trial != AUTO and not isinstance(self.gpus_per_trial, (int, float)):
            raise UserError(f"--gpus-per-trial must be '{AUTO}' or a number of GPUs, got {self.gpus_per_trial!r}")
        if self.latency_device not in LATENCY_DEVICES:
            raise UserError(f"--latency-device must be one of {', '.join(LATENCY_DEVICES)}, got {self.latency_device!r}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}: choose from {', '.join(SAMPLERS)}")
        counts = {"--trials": self.trials, "--steps": self.steps, "--anytime-steps": self.anytime_steps,
                  "--batch-size": self.batch_size,
                  "--latency-repeats": self.latency_repeats, "--concurrency": self.concurrency}
        amounts = {"--crop-seconds": self.crop_seconds, "--lr": self.lr, "--budget-seconds": self.budget_seconds,
                   "--cpus-per-trial": self.cpus_per_trial, "--max-latency-ms": self.max_latency_ms}
        gpus = {} if self.gpus_per_trial == AUTO else {"--gpus-per-trial": self.gpus_per_trial}
        rules = [(counts, lambda v: v >= 1, "at least 1"), (amounts, lambda v: v > 0, "> 0"),
                 (gpus, lambda v: v >= 0, ">= 0")]
        for options, holds, what in rules:
            for option, value in options.items():
                if value is not None and not holds(value):  # None: the option was not given
                    raise UserError(f"{option} must be {what}, got {value:g}")
        self._check_finalists()
        if self.data != DEMO_DATA and not Path(self.data).expanduser().exists():
            raise UserError(
                f"data path does not exist: {self.data} (expected an audio directory, a fairseq .tsv manifest, "
                f"or '{DEMO_DATA}')"
            )
        if self.space not in preset_names() and not Path(self.space).expanduser().is_file():
            raise UserError(
                f"space {self.space!r} is neither a preset ({', '.join(preset_names())}) nor an existing YAML/JSON file"
            )

    def _check_finalists(self) -> None:
        """The finalist stage's options (the recipe's name and the probe corpus's labels are checked by
        `sslc.search.finalists.check_finalists`, which needs torch)."""
        if self.finalists is None:
            given = [option for option, value in (("--finalist-steps", self.finalist_steps),
                                                  ("--probe-data", self.probe_data),
                                                  ("--probe-heldout", self.probe_heldout)) if value is not None]
            if given or self.finalist_recipe != "quick":
                raise UserError(f"{', '.join(given) or '--finalist-recipe'} goes with --finalists K")
            return
        if not 1 <= self.finalists <= self.trials:
            raise UserError(f"--finalists must be between 1 and --trials ({self.trials}), got {self.finalists}")
        for option, value in (("--finalist-steps", self.finalist_steps), ("--probe-epochs", self.probe_epochs)):
            if value is not None and value < 1:
                raise UserError(f"{option} must be at least 1, got {value}")
        if self.probe_heldout is not None and self.probe_data is None:
            raise UserError("--probe-heldout goes with --probe-data")
        for option, value in (("--probe-data", self.probe_data), ("--probe-heldout", self.probe_heldout)):
            if value is not None and not Path(value).expanduser().is_dir():
                raise UserError(f"{option} must be a directory of labelled audio, got {value}")

    @property
    def once_for_all_steps(self) -> int:
        return self.anytime_steps if self.anytime_steps is not None else 10 * self.steps

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
