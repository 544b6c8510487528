"""A search space: which compression knobs are searched, over which ranges, and how a trial becomes a config.

A space file (YAML or JSON) maps each knob to a fixed value, a list of choices, or a range {min, max, step};
"all" stands for the teacher's own size. `SearchSpace.suggest` asks an Optuna trial for every knob
(define-by-run: per-layer knobs exist only for the depth the trial chose) and returns a valid CompressionConfig.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sslc.compress import CompressionConfig
from sslc.compress.config import (
    CONV_IMPORTANCE,
    FFN_IMPORTANCE,
    HEAD_IMPORTANCE,
    HIDDEN_IMPORTANCE,
    break_even_rank,
    hidden_width,
)
from sslc.errors import UserError, first_line
from sslc.models import EncoderConfig

PRESET_DIR = "presets"
KNOBS = {
    "depth": "int",
    "layer_selection": "choice",
    "heads": "int",
    "ffn_keep": "float",
    "attn_rank": "rank",
    "ffn_rank": "rank",
    "conv_keep": "float",
    "sparsity": "float",
    "quantize": "choice",
    # The student's hidden (residual) width as a share of the teacher's, rounded to a multiple of the positional
    # conv's groups (16 in the released models: 0.5 of 768 is LightHuBERT Small's 384, 0.625 FitHuBERT's 480).
    "hidden": "float",
    # Which score ranks the heads / FFN units / CNN channels / residual channels a smaller size keeps
    # (sslc.compress.importance).
    "head_importance": "choice",
    "ffn_importance": "choice",
    "conv_importance": "choice",
    "hidden_importance": "choice",
}
# Knobs added after studies were first recorded: written into a space's definition only when not at their default.
LATER_KNOBS = ("hidden", "head_importance", "ffn_importance", "conv_importance", "hidden_importance")
DEFAULTS = {
    "depth": "all", "layer_selection": "first", "heads": "all", "ffn_keep": 1.0, "attn_rank": "full",
    "ffn_rank": "full", "conv_keep": 1.0, "sparsity": 0.0, "quantize": "none", "hidden": 1.0,
    "head_importance": "l1", "ffn_importance": "l1", "conv_importance": "l1", "hidden_importance": "l1",
}
LAYER_SELECTIONS = ("evenly", "first")
QUANTIZE = ("none", "int8")
CHOICES = {"layer_selection": LAYER_SELECTIONS, "quantize": QUANTIZE, "head_importance": HEAD_IMPORTANCE,
           "ffn_importance": FFN_IMPORTANCE, "conv_importance": CONV_IMPORTANCE,
           "hidden_importance": HIDDEN_IMPORTANCE}


class SpaceError(UserError):
    """A space file that cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True)
class Knob:
    """One searched quantity: `fixed` value, `choices`, or a `low`..`high` range with `step`."""

    name: str
    fixed: Any = None
    choices: tuple | None = None
    low: Any = None
    high: Any = None
    step: Any = None

    @property
    def searched(self) -> bool:
        return self.fixed is None


def _parse_knob(name: str, raw: Any, where: str) -> Knob:
    kind = KNOBS[name]
    key = f"{where}: key '{name}'"

    def check_value(value, label=key):
        # heads 0 and ffn_keep 0 remove a layer's attention / FFN block (DPHuBERT); depth stays >= 1
        if name == "heads" and value != "all" and not (_is_count(value) and value >= 0):
            raise SpaceError(f"{label} must be a non-negative integer (0 removes the attention block) or 'all', "
                             f"got {value!r}")
        if name == "depth" and value != "all" and not (_is_count(value) and value >= 1):
            raise SpaceError(f"{label} must be a positive integer or 'all', got {value!r}")
        if name == "ffn_keep" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise SpaceError(f"{label} must be a fraction in [0, 1] (0 removes the FFN block), got {value!r}")
        if name in ("conv_keep", "hidden") and not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise SpaceError(f"{label} must be a fraction in (0, 1], got {value!r}")
        if name == "sparsity" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise SpaceError(f"{label} must be a fraction in [0, 1), got {value!r}")
        if kind == "rank" and value != "full" and not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise SpaceError(f"{label} must be 'full' or a share (0, 1] of the break-even rank, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise SpaceError(f"{label} must be one of {CHOICES[name]}, got {value!r}")
        return value

    if isinstance(raw, list):
        if not raw:
            raise SpaceError(f"{key} has an empty list of choices")
        choices = tuple(check_value(v, f"{key}[{i}]") for i, v in enumerate(raw))
        return Knob(name, fixed=choices[0]) if len(choices) == 1 else Knob(name, choices=choices)
    if isinstance(raw, dict):
        if kind not in ("int", "float") or set(raw) - {"min", "max", "step"} or not {"min", "max"} <= set(raw):
            raise SpaceError(f"{key}: a range needs 'min' and 'max' (and optional 'step'), got {sorted(raw)}")
        low, high = check_value(raw["min"], f"{key}.min"), check_value(raw["max"], f"{key}.max")
        step = raw.get("step")
        if step is not None and not (isinstance(step, (int, float)) and step > 0):
            raise SpaceError(f"{key}.step must be positive, got {step!r}")
        if low != "all" and high != "all" and low > high:
            raise SpaceError(f"{key}: min {low} is above max {high}")
        if high == "all" and low == "all":
            return Knob(name, fixed="all")
        return Knob(name, low=low, high=high, step=step)
    return Knob(name, fixed=check_value(raw))


class SearchSpace:
    """The knobs of one space; `suggest` turns an Optuna trial into a CompressionConfig for a teacher."""

    def __init__(self, knobs: dict[str, Knob], name: str = "custom", description: str = ""):
        self.knobs, self.name, self.description = knobs, name, description

    # ---- loading -----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, name: str = "custom", where: str = "space") -> SearchSpace:
        if not isinstance(data, dict):
            raise SpaceError(f"{where}: expected a mapping of knob names to values, got {type(data).__name__}")
        description = data.get("description", "")
        unknown = set(data) - set(KNOBS) - {"description", "name"}
        if unknown:
            raise SpaceError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(KNOBS)})")
        knobs = {k: _parse_knob(k, data.get(k, DEFAULTS[k]), where) for k in KNOBS}
        return cls(knobs, name=data.get("name", name), description=description)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SpaceError(f"space file {path} not found (give a preset name: {', '.join(preset_names())})")
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise SpaceError(f"space file {path} is not valid YAML/JSON: {first_line(error)}") from None
        return cls.from_dict(data, name=path.stem, where=f"space file {path}")

    @classmethod
    def load(cls, name_or_path: str) -> SearchSpace:
        """A preset name (e.g. "combined") or a path to a YAML/JSON file."""
        if name_or_path in preset_names():
            text = resources.files(__package__).joinpath(PRESET_DIR, f"{name_or_path}.yaml").read_text()
            return cls.from_dict(yaml.safe_load(text), name=name_or_path, where=f"preset {name_or_path}")
        return cls.from_file(name_or_path)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for name, knob in self.knobs.items():
            if name in LATER_KNOBS and knob.fixed == DEFAULTS[name]:
                continue  # as a space written before the knob existed: a study made then still resumes
            if knob.fixed is not None:
                out[name] = knob.fixed
            elif knob.choices is not None:
                out[name] = list(knob.choices)
            else:
                out[name] = {"min": knob.low, "max": knob.high, **({"step": knob.step} if knob.step else {})}
        return out

    def elastic_problems(self) -> list[str]:
        """Why an elastic (anytime) student could not serve every config of this space; empty when it can.

        Its sizes are prefixes of one model: the first n layers, and heads, FFN units, CNN channels and hidden
        channels in one importance order (so the criteria are fixed); low rank, sparsity and int8 are not shared."""
        required = {"layer_selection": "first", "attn_rank": "full", "ffn_rank": "full", "sparsity": 0.0,
                    "quantize": "none"}
        problems = [f"{name} must be {value!r}" for name, value in required.items()
                    if self.knobs[name].fixed != value]
        problems += [f"{name} must be fixed" for name in CHOICES if name.endswith("_importance")
                     and self.knobs[name].searched]
        return problems

    # ---- sampling ----------------------------------------------------------------------------------------
    def suggest(self, trial, teacher: EncoderConfig) -> CompressionConfig:
        """Ask `trial` (an optuna.Trial) for every searched knob and build the config for `teacher`."""
        return self._build(_TrialPicker(trial), teacher)

    def smallest(self, teacher: EncoderConfig) -> CompressionConfig:
        """The config with every knob at its cheapest: no config of this space has fewer MACs."""
        return self._build(_ExtremePicker(lowest=True), teacher)

    def largest(self, teacher: EncoderConfig) -> CompressionConfig:
        return self._build(_ExtremePicker(lowest=False), teacher)

    def sample(self, teacher: EncoderConfig, rng: random.Random) -> CompressionConfig:
        """A config drawn as Optuna's RandomSampler would draw it (each knob uniformly), without a study: cheap
        enough to estimate, before a search, how much of the space fits a budget."""
        return self.sample_with_params(teacher, rng)[0]

    def sample_with_params(self, teacher: EncoderConfig, rng: random.Random) -> tuple[CompressionConfig, dict]:
        """`sample`, with the trial params that give the same config (what `optuna.Study.enqueue_trial` takes)."""
        drawn = _RandomTrial(rng)
        return self._build(_TrialPicker(drawn), teacher), dict(drawn.params)

    def params_near(self, config: CompressionConfig, teacher: EncoderConfig) -> tuple[CompressionConfig, dict]:
        """The trial params of this space's config nearest to `config`, knob by knob (each size snapped to the
        knob's range and grid), and that config: how a shape from outside the space (an anchor's) is asked of a
        study (`optuna.Study.enqueue_trial`). A config of this space comes back as itself."""
        width = config.width(teacher)
        depth = len(config.layers)
        wanted: dict[str, Any] = {
            "hidden": width / teacher.embed_dim, "depth": depth, "sparsity": config.sparsity,
            "quantize": config.quantize,
            "layer_selection": "first" if list(config.layers) == list(range(depth)) else "evenly",
            **{name: getattr(config, name) for name in ("head_importance", "ffn_importance", "conv_importance",
                                                       "hidden_importance")},
        }
        for k, layer in enumerate(config.layers):
            inner = config.heads[k] * teacher.head_dim
            wanted[f"heads_{k}"] = config.heads[k]
            wanted[f"ffn_keep_{k}"] = config.ffn[k] / teacher.layers[layer].ffn_dim
            for name, rank, out in (("attn_rank", config.attn_rank[k], inner), ("ffn_rank", config.ffn_rank[k],
                                                                                config.ffn[k])):
                wanted[f"{name}_{k}"] = "full" if rank is None else rank / break_even_rank(width, out)
        for i, (kept, conv) in enumerate(zip(config.conv_channels, teacher.conv_layers)):
            wanted[f"conv_keep_{i}"] = kept / conv.channels
        nearest = _NearestTrial(wanted)
        return self._build(_TrialPicker(nearest), teacher), dict(nearest.params)

    def _build(self, pick, teacher: EncoderConfig) -> CompressionConfig:
        width = hidden_width(pick.float(self.knobs["hidden"], "hidden"), teacher)
        depth = pick.int(self.knobs["depth"], "depth", teacher.num_layers)
        selection = pick.choice(self.knobs["layer_selection"], "layer_selection")
        if selection == "evenly":
            layers = CompressionConfig.evenly_spaced(teacher, depth).layers
        else:
            layers = CompressionConfig.first_n(teacher, depth).layers
        heads, ffn, attn_rank, ffn_rank = [], [], [], []
        for k, layer in enumerate(layers):
            spec = teacher.layers[layer]
            heads.append(pick.int(self.knobs["heads"], f"heads_{k}", spec.heads))
            keep = pick.float(self.knobs["ffn_keep"], f"ffn_keep_{k}")
            ffn.append(max(1, round(keep * spec.ffn_dim)) if keep > 0 else 0)
            inner = heads[-1] * teacher.head_dim
            attn_rank.append(_rank(pick.rank(self.knobs["attn_rank"], f"attn_rank_{k}"), width, inner))
            ffn_rank.append(_rank(pick.rank(self.knobs["ffn_rank"], f"ffn_rank_{k}"), width, ffn[-1]))
        if self.knobs["depth"].searched:
            # The knobs of the layers this depth leaves out are asked too, their values unused: a static search
            # space. Optuna's GPSampler models only the params every trial has, so with params that exist only
            # in deeper trials it would draw every layer's knobs past the shallowest depth at random.
            for k in range(len(layers), teacher.num_layers):
                pick.int(self.knobs["heads"], f"heads_{k}", teacher.layers[k].heads)
                pick.float(self.knobs["ffn_keep"], f"ffn_keep_{k}")
                pick.rank(self.knobs["attn_rank"], f"attn_rank_{k}")
                pick.rank(self.knobs["ffn_rank"], f"ffn_rank_{k}")
        conv_channels = []
        for i, conv in enumerate(teacher.conv_layers):
            keep = pick.float(self.knobs["conv_keep"], f"conv_keep_{i}")
            conv_channels.append(max(1, round(keep * conv.channels)))
        return CompressionConfig(
            layers=list(layers), heads=heads, ffn=ffn, attn_rank=attn_rank, ffn_rank=ffn_rank,
            conv_channels=conv_channels, sparsity=float(pick.float(self.knobs["sparsity"], "sparsity")),
            quantize=pick.choice(self.knobs["quantize"], "quantize"),
            hidden=width if width < teacher.embed_dim else None,
            **{name: pick.choice(self.knobs[name], name) for name in ("head_importance", "ffn_importance",
                                                                     "conv_importance", "hidden_importance")},
        )



def _rank(share, in_features: int, out_features: int) -> int | None:
    """A share of the break-even rank; None (full rank) when it would not save anything or the block is removed."""
    if share == "full" or out_features == 0:
        return None
    rank = max(1, int(share * break_even_rank(in_features, out_features)))
    return rank if rank < min(in_features, out_features) else None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve(value, full: int):
    return full if value == "all" else value


class _TrialPicker:
    """Draws each searched knob from an Optuna trial; fixed knobs are not recorded as params."""

    def __init__(self, trial):
        self.trial = trial

    def int(self, knob: Knob, name: str, full: int) -> int:
        if not knob.searched:
            return min(_resolve(knob.fixed, full), full)
        if knob.choices is not None:
            return min(_resolve(self.trial.suggest_categorical(name, list(knob.choices)), full), full)
        low, high = min(_resolve(knob.low, full), full), min(_resolve(knob.high, full), full)
        return self.trial.suggest_int(name, low, high, step=int(knob.step or 1)) if low < high else low

    def float(self, knob: Knob, name: str) -> float:
        if not knob.searched:
            return knob.fixed
        if knob.choices is not None:
            return self.trial.suggest_categorical(name, list(knob.choices))
        if knob.step:
            # Snap the top to the grid so Optuna does not warn that max is not reachable by steps.
            high = knob.low + knob.step * int(round((knob.high - knob.low) / knob.step, 9))
            return self.trial.suggest_float(name, knob.low, high, step=knob.step)
        return self.trial.suggest_float(name, knob.low, knob.high)

    def rank(self, knob: Knob, name: str):
        return self.choice(knob, name) if knob.choices is not None else self.float(knob, name)

    def choice(self, knob: Knob, name: str):
        if not knob.searched:
            return knob.fixed
        return self.trial.suggest_categorical(name, list(knob.choices))


class _RecordingTrial:
    """Answers an Optuna trial's `suggest_*` calls (in subclasses) and keeps what it answered as trial params."""

    def __init__(self):
        self.params: dict[str, Any] = {}

    def _keep(self, name: str, value):
        self.params[name] = value
        return value


class _RandomTrial(_RecordingTrial):
    """The three `suggest_*` calls of an Optuna trial, answered uniformly at random by `rng`."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def suggest_categorical(self, name: str, choices: list):
        return self._keep(name, self.rng.choice(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self._keep(name, self.rng.randrange(low, high + 1, step))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None) -> float:
        if step:
            return self._keep(name, low + step * self.rng.randint(0, int(round((high - low) / step, 9))))
        return self._keep(name, self.rng.uniform(low, high))


class _NearestTrial(_RecordingTrial):
    """The three `suggest_*` calls of an Optuna trial, answered with the allowed value nearest to `wanted[name]`
    (a rank's "full" counts as a share of 1; a knob with no wanted value, e.g. a layer `config` does not have,
    keeps everything: its largest value)."""

    def __init__(self, wanted: dict[str, Any]):
        super().__init__()
        self.wanted = wanted

    def suggest_categorical(self, name: str, choices: list):
        want = self.wanted.get(name)
        if want in choices:
            return self._keep(name, want)
        numeric = [(1.0 if c == "full" else c) for c in choices]
        if isinstance(want, (int, float)) and all(isinstance(c, (int, float)) for c in numeric):
            return self._keep(name, choices[min(range(len(choices)), key=lambda i: abs(numeric[i] - want))])
        if want is None and all(isinstance(c, (int, float)) for c in numeric):
            return self._keep(name, choices[max(range(len(choices)), key=lambda i: numeric[i])])
        return self._keep(name, choices[0])

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        want = self.wanted.get(name, high)
        steps = round((min(max(want, low), high) - low) / step)
        return self._keep(name, int(low + step * steps))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None) -> float:
        want = min(max(self.wanted.get(name, high), low), high)
        if step:
            return self._keep(name, low + step * round((want - low) / step))
        return self._keep(name, float(want))


class _ExtremePicker:
    """Picks every knob at its cheapest (or dearest) value, to bound the MACs a space can reach."""

    def __init__(self, lowest: bool):
        self.lowest = lowest

    def _pick(self, values):
        return min(values) if self.lowest else max(values)

    def int(self, knob: Knob, name: str, full: int) -> int:
        if knob.fixed is not None:
            return min(_resolve(knob.fixed, full), full)
        values = knob.choices if knob.choices is not None else (knob.low, knob.high)
        return self._pick([min(_resolve(v, full), full) for v in values])

    def float(self, knob: Knob, name: str) -> float:
        if knob.fixed is not None:
            return knob.fixed
        return self._pick(knob.choices if knob.choices is not None else (knob.low, knob.high))

    def rank(self, knob: Knob, name: str):
        values = [knob.fixed] if knob.fixed is not None else list(knob.choices or (knob.low, knob.high))
        shares = [1.0 if v == "full" else v for v in values]
        best = self._pick(shares)
        return "full" if best == 1.0 and "full" in values else best

    def choice(self, knob: Knob, name: str):
        if knob.fixed is not None:
            return knob.fixed
        if knob.name != "quantize":
            return knob.choices[0]  # which layers or units are kept does not change MACs
        return "none" if "none" in knob.choices else knob.choices[0]


def preset_names() -> list[str]:
    folder = resources.files(__package__).joinpath(PRESET_DIR)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
