"""Teachers: the encoders a search compresses, loaded from whatever the user names.

`load_teacher(spec)` accepts

* ``random:<preset>``: a seeded random initialisation of a preset architecture (``random:hubert-base``, ...);
* a local directory holding a transformers checkpoint (``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin``) of a HuBERT, wav2vec 2.0 or WavLM model, base or with a head (CTC, pre-training, ...);
* a Hugging Face hub id such as ``facebook/hubert-base-ls960`` (read from the hub cache, else downloaded);
* ``torchaudio:<BUNDLE>`` such as ``torchaudio:HUBERT_BASE``, when torchaudio is installed;
* a transformers model or a torchaudio ``Wav2Vec2Model`` instance, or one of our `SpeechEncoder`s.

Every failure a user can fix (a missing directory, corrupt or mismatched weights, an unsupported model, no network)
is a one-line `UserError`. The teacher comes back in eval mode with two attributes: `teacher_spec` (what it was
loaded from) and `is_random` (True for ``random:`` presets, whose outputs mean nothing).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, first_line
from .builders import PRESETS, build_encoder
from .encoder import SpeechEncoder
from .hf_import import SUPPORTED_MODEL_TYPES, config_from_hf, encoder_from_hf_model

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_BASE_NAMESPACES = ("feature_extractor.", "feature_projection.", "encoder.", "adapter.")
_EXPECTED_DIR = "a transformers checkpoint directory: config.json plus model.safetensors or pytorch_model.bin"


def accepted_forms() -> str:
    return (
        f"random:<preset> ({', '.join(PRESETS)}), a local transformers checkpoint directory, a hub id such as "
        "facebook/hubert-base-ls960, torchaudio:<BUNDLE> such as torchaudio:HUBERT_BASE, or a transformers / "
        "torchaudio model instance"
    )


def _finish(encoder: SpeechEncoder, spec: str, is_random: bool) -> SpeechEncoder:
    encoder.eval()
    encoder.teacher_spec = spec
    encoder.is_random = is_random
    return encoder


def describe_teacher(model: SpeechEncoder) -> str:
    """One line about a teacher: where it came from, its shape and size, and "(random weights)" for random ones."""
    config = model.config
    spec = getattr(model, "teacher_spec", None) or type(model).__name__
    params = sum(p.numel() for p in model.parameters())
    layout = "pre-LN" if config.layer_norm_first else "post-LN"
    text = (
        f"{spec}: {config.family}, {config.num_layers} layers, {config.embed_dim} wide, {layout}, "
        f"{params / 1e6:.1f}M parameters"
    )
    if getattr(model, "is_random", False):
        text += " (random weights)"
    return text


# ---- random presets ------------------------------------------------------------------------------------------
def _load_random(name: str, seed: int) -> SpeechEncoder:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} in 'random:{name}'; known presets: {', '.join(PRESETS)}")
    return build_encoder(PRESETS[name](), seed=seed)


# ---- transformers checkpoints --------------------------------------------------------------------------------
class _Unavailable(Exception):
    """The checkpoint is not in the hub cache (or, with network, not on the hub)."""


def _import_transformers():
    try:
        import transformers
    except Exception as error:
        raise UserError(
            f"transformers is needed to load this teacher but does not import: {first_line(error)} "
            "(pip install transformers)"
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """Silence transformers' load reports, progress bars and the hub client's retry warnings while loading."""
    hf_logging = transformers.utils.logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_logging = None
    with contextlib.suppress(Exception):
        from huggingface_hub.utils import logging as hub_logging
    hub_level = hub_logging.get_verbosity() if hub_logging is not None else None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if hub_logging is not None:
        hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_logging is not None:
            hub_logging.set_verbosity(hub_level)


def _base_class(transformers, model_type: str):
    return {
        "hubert": transformers.HubertModel,
        "wav2vec2": transformers.Wav2Vec2Model,
        "wavlm": transformers.WavLMModel,
    }[model_type]


def _check_loading_info(info: dict, label: str, prefix: str) -> None:
    """Missing, mis-shaped or surplus encoder weights mean the checkpoint does not match its config: an error
    (transformers would silently initialise them at random). Weights of heads (CTC, quantiser, ...) are ignored."""
    problem = f"the weights in {label} do not match its config.json"
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        item = mismatched[0]
        if isinstance(item, tuple) and len(item) == 3:
            key, in_checkpoint, in_config = item
            detail = (
                f"{key} is {tuple(in_checkpoint)} in the checkpoint but {tuple(in_config)} per the config"
            )
        else:
            detail = str(item)
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UserError(f"{problem}: {detail}{more}")
    missing = sorted(k for k in info.get("missing_keys") or [] if k != "masked_spec_embed")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{problem}: it lacks {', '.join(missing[:3])}{more}")
    surplus = []
    for key in info.get("unexpected_keys") or []:
        bare = key[len(prefix) + 1 :] if key.startswith(prefix + ".") else key
        if bare.startswith(_BASE_NAMESPACES):
            surplus.append(key)
    if surplus:
        surplus.sort()
        more = f" and {len(surplus) - 3} more" if len(surplus) > 3 else ""
        raise UserError(
            f"{problem}: it has encoder weights the config has no place for: {', '.join(surplus[:3])}{more}"
        )


def _load_pretrained(source: str, label: str, hub: bool, local_files_only: bool = False) -> SpeechEncoder:
    """Load a transformers checkpoint (a directory or a hub id) and convert it. With `hub`, a file that cannot be
    found raises `_Unavailable` (the caller decides whether to try the network); every other failure is a
    `UserError` that names `label`."""
    transformers = _import_transformers()
    kwargs = {"local_files_only": True} if local_files_only else {}
    with _quiet_transformers(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(source, **kwargs)
        except OSError as error:
            if hub:
                raise _Unavailable(first_line(error)) from None
            raise UserError(f"could not read the config of {label}: {first_line(error)}") from None
        except Exception as error:
            raise UserError(
                f"could not read the config of {label}: {first_line(error)} "
                f"(expected a model_type among {', '.join(SUPPORTED_MODEL_TYPES)})"
            ) from None
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UserError(
                f"{label} holds a {model_type!r} model; supported model types: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        try:
            config_from_hf(config)  # reject unsupported features before reading any weights
        except UserError as error:
            raise UserError(f"{label}: {error}") from None
        cls = _base_class(transformers, model_type)
        try:
            model, info = cls.from_pretrained(
                source,
                config=config,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                dtype=torch.float32,
                **kwargs,
            )
        except OSError as error:
            if hub:
                raise _Unavailable(first_line(error)) from None
            raise UserError(
                f"could not load the weights in {label}: {first_line(error)} (expected {_EXPECTED_DIR})"
            ) from None
        except Exception as error:
            raise UserError(
                f"could not load the weights in {label}: {type(error).__name__}: "
                f"{first_line(error)} (corrupt or incompatible weight file?)"
            ) from None
    _check_loading_info(info, label, cls.base_model_prefix)
    try:
        return encoder_from_hf_model(model)
    except UserError as error:
        raise UserError(f"{label}: {error}") from None


def _load_local(path: Path) -> SpeechEncoder:
    if not path.exists():
        raise UserError(f"teacher directory {path} does not exist (expected {_EXPECTED_DIR})")
    if not path.is_dir():
        raise UserError(f"teacher path {path} is not a directory (expected {_EXPECTED_DIR})")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json (expected {_EXPECTED_DIR})")
    return _load_pretrained(str(path), str(path), hub=False)


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (None when it can, or when a proxy decides): without network, the hub
    client retries for ~30 s before failing; one TCP connection attempt answers in a few seconds."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the hub client try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^[a-z]+://", "", endpoint).split("/")[0]
    host, _, port = host.partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        return f"{host} cannot be reached ({getattr(error, 'strerror', None) or error})"
    return None


def _load_hub(repo_id: str) -> SpeechEncoder:
    """From the hub cache if it is there (no network call), else from the network unless HF_HUB_OFFLINE is set."""
    offline = _offline()
    try:
        return _load_pretrained(repo_id, repo_id, hub=True, local_files_only=True)
    except _Unavailable as error:
        reason = str(error)
    unreachable = None if offline else _hub_unreachable()
    if not offline and unreachable is None:
        try:
            return _load_pretrained(repo_id, repo_id, hub=True)
        except _Unavailable as error:
            reason = str(error)
    if offline:
        where = "the hub cache (HF_HUB_OFFLINE is set)"
    elif unreachable:
        where, reason = "the hub cache, and the hub is out of reach", unreachable
    else:
        where = "the hub cache or network"
    raise UserError(
        f"could not load {repo_id!r} from {where}: {reason}; download it where there is network, or give a local "
        "checkpoint directory (what save_pretrained writes)"
    )


# ---- dispatch ------------------------------------------------------------------------------------------------
def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", ".\\"))
        or "\\" in text
        or text.count("/") > 1
        or text.endswith("/")
        or text in {".", ".."}
    )


def _from_module(module: nn.Module) -> tuple[SpeechEncoder, str, bool]:
    if isinstance(module, SpeechEncoder):
        return (
            module,
            getattr(module, "teacher_spec", None) or "SpeechEncoder instance",
            bool(getattr(module, "is_random", False)),
        )
    origin = type(module).__module__ or ""
    name = type(module).__name__
    if origin.startswith("transformers"):
        source = getattr(getattr(module, "config", None), "_name_or_path", "") or f"{name} instance"
        return encoder_from_hf_model(module), source, False
    if origin.startswith("torchaudio") or hasattr(getattr(module, "encoder", None), "transformer"):
        from .torchaudio_import import encoder_from_torchaudio_model

        return encoder_from_torchaudio_model(module), f"torchaudio {name} instance", False
    raise UserError(f"cannot use a {name} as a teacher; expected {accepted_forms()}")


def load_teacher(spec: str | os.PathLike | nn.Module, seed: int = 0) -> SpeechEncoder:
    """The teacher `spec` names, as our `SpeechEncoder` in eval mode (see the module docstring for the forms).

    `seed` seeds the initialisation of ``random:`` presets (the same seed gives the same weights). The result has
    `teacher_spec` (str) and `is_random` (bool) attributes; `describe_teacher` turns it into one line.
    """
    if isinstance(spec, nn.Module):
        encoder, label, is_random = _from_module(spec)
        return _finish(encoder, label, is_random)
    if not isinstance(spec, (str, os.PathLike)):
        raise UserError(f"cannot use a {type(spec).__name__} as a teacher; expected {accepted_forms()}")
    text = os.fspath(spec).strip()
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise UserError(f"empty teacher; expected {accepted_forms()}")
    if text.startswith("random:"):
        return _finish(_load_random(text[len("random:") :].strip(), seed), text, True)
    if text.startswith("torchaudio:"):
        from .torchaudio_import import load_torchaudio_bundle

        return _finish(load_torchaudio_bundle(text[len("torchaudio:") :].strip()), text, False)
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        return _finish(_load_local(path), str(path), False)
    if _HUB_ID.fullmatch(text):
        return _finish(_load_hub(text), text, False)
    hint = f" (did you mean random:{text}?)" if text in PRESETS else ""
    raise UserError(f"unknown teacher {text!r}{hint}; expected {accepted_forms()}")
