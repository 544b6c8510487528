"""The student file: weights + architecture + provenance, loadable with torch and `sslc.models` only.

One writer (`save_student`, a versioned format) for every student sslc saves: each trial's `student.pt`, a
retrained student, an exported one. One payload (architecture, weights, compression, provenance, metrics) in one
of two containers: `torch.save` ("sslc", what trials write) or safetensors (no pickle, the export default;
`sslc.models.formats.safetensors_file`); readers tell them apart by their first bytes. `load_student` reads any of them back into an `ExportedStudent`, a feature
extractor used the way s3prl upstreams are: waveforms in, a list of hidden states out. Nothing here imports
Optuna or the search.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sslc.errors import UserError, first_line
from sslc.files import write_atomically
from sslc.models import EncoderConfig, build_encoder
from sslc.models.formats import CONTAINERS

FORMAT = "sslc-student"
VERSION = 1
WEIGHTS_FILE = "student.pt"
ANYTIME_FORMAT = "sslc-anytime"  # see sslc.runs.anytime_file
# = sslc.data.SAMPLE_RATE, not imported: loading a student must not pull in the data pipeline.
SAMPLE_RATE = 16000


# ---- the file ---------------------------------------------------------------------------------------------------
def save_student(
    path: str | os.PathLike,
    model: nn.Module,
    compression: dict,
    teacher: str,
    provenance: dict | None = None,
    metrics: dict | None = None,
    container: str = "sslc",
) -> Path:
    """Write `model` (a float `SpeechEncoder`) as a standalone student file, atomically, in `container` (see
    `CONTAINERS`)."""
    payload = student_payload(model, compression, teacher, provenance, metrics)
    return write_payload(path, payload, container)


def student_payload(model: nn.Module, compression: dict, teacher: str, provenance: dict | None = None,
                    metrics: dict | None = None) -> dict:
    """What a student file holds: its `state_dict` and, JSON-serialisable, everything else (the metadata every
    export format carries); a sparse student's pruning masks are folded into its weights (the file loads into a
    plain `build_encoder` model)."""
    from sslc.compress.sparsity import dense_state_dict  # saving only: loading needs torch and sslc.models

    config = getattr(model, "config", None)
    if not isinstance(config, EncoderConfig):
        raise TypeError("save_student needs a float SpeechEncoder (int8 is re-applied when loading)")
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in dense_state_dict(model).items()},
        "compression": dict(compression),
        "teacher": str(teacher),
        "provenance": dict(provenance or {}),
        "metrics": dict(metrics or {}),
    }


def write_payload(path: str | os.PathLike, payload: dict, container: str = "sslc") -> Path:
    """Write a sslc file's payload (a student's or an anytime file's) atomically in `container`."""
    if container == "safetensors":
        from sslc.models.formats.safetensors_file import write_safetensors

        return write_atomically(path, lambda tmp: write_safetensors(tmp, payload))
    if container != "sslc":
        raise ValueError(f"container must be one of {CONTAINERS}, got {container!r}")
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def read_payload(path: str | os.PathLike, map_location="cpu") -> dict:
    """What a sslc file (a student or an anytime file, either container) holds, unchecked; UserError for
    anything else."""
    from sslc.models.formats.safetensors_file import is_safetensors, read_safetensors

    path = Path(path)
    if not path.is_file():
        raise UserError(f"student file {path} does not exist")
    if is_safetensors(path):
        try:
            payload = read_safetensors(path, map_location)
        except Exception as error:  # a header or tensor the library cannot read, or no sslc metadata
            raise UserError(f"{path} is not a sslc student file ({first_line(error)[:120]})") from None
        if not {"architecture", "state_dict"} <= set(payload):
            raise UserError(f"{path} is not a sslc student file (no architecture and weights in it)")
        return payload
    try:
        # weights_only: a student file holds tensors and plain containers, never code to run.
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # pickle, zip and torch errors all mean "not a student file"
        raise UserError(f"{path} is not a sslc student file (not something torch.save wrote)") from None
    if not isinstance(payload, dict) or not {"architecture", "state_dict"} <= set(payload):
        raise UserError(f"{path} is not a sslc student file (no architecture and weights in it)")
    return payload


def check_student_payload(payload: dict, path: str | os.PathLike) -> dict:
    if payload.get("format", FORMAT) != FORMAT or int(payload.get("version", VERSION)) > VERSION:
        hint = (" (an anytime file: load it with sslc.load_student(path, budget=...) or sslc.load_anytime)"
                if payload.get("format") == ANYTIME_FORMAT else "")
        raise UserError(
            f"{path} is a {payload.get('format')} file of version {payload.get('version')}: "
            f"this sslc reads {FORMAT} up to version {VERSION}{hint}"
        )
    return payload


def read_student_file(path: str | os.PathLike, map_location="cpu") -> dict:
    """The contents of a student file (ours, or a trial's `student.pt`); UserError for anything else."""
    return check_student_payload(read_payload(path, map_location), path)


def build_from_payload(payload: dict, quantize: bool = True) -> nn.Module:
    """The encoder a student file describes; int8 (as deployed) when its compression says so and `quantize`."""
    try:
        config = EncoderConfig.from_dict(payload["architecture"])
        encoder = build_encoder(config)
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"student file does not match its architecture: {first_line(error)[:160]}") from None
    encoder.eval()
    if quantize and (payload.get("compression") or {}).get("quantize") == "int8":
        from sslc.compress.quantize import quantize_int8  # torch only; imported when needed

        encoder = quantize_int8(encoder)
    return encoder


# ---- the feature extractor --------------------------------------------------------------------------------------
class ExportedStudent(nn.Module):
    """A compressed encoder as a feature extractor.

    Input: 16 kHz mono float waveforms (about -1..1, as `sslc.data.load_audio` returns them): a [B, samples]
    tensor with optional `lengths` (samples per row, for padded batches), a 1-D tensor, or a list of 1-D
    tensors / arrays of any lengths (padded here, as s3prl does). Audio at another rate must be resampled first:
    pass `sample_rate=` and a rate other than `sample_rate` (16000) raises a ValueError instead of silently
    giving wrong features.
    Output: `student(waveforms)` -> list of `num_layers + 1` hidden states [B, T, D] (index 0 = input of the
    first layer, i = output of layer i; T = samples // ~320, D = `hidden_size`), the tensors the encoder
    computes. `extract_features` returns s3prl's dict: {"hidden_states", "last_hidden_state", "frame_lengths"}.
    """

    sample_rate = SAMPLE_RATE  # the only rate the student was trained on

    def __init__(self, encoder: nn.Module, config: EncoderConfig, metadata: dict | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = config
        self.metadata = dict(metadata or {})

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def hidden_size(self) -> int:
        return self.config.embed_dim

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output frame (s3prl's upstream API): the product of the CNN strides."""
        rate = 1
        for conv in self.config.conv_layers:
            rate *= conv.stride
        return rate

    def _device(self) -> torch.device:
        for tensor in self.encoder.parameters():
            return tensor.device
        return torch.device("cpu")  # int8 modules keep packed weights, not parameters: they run on CPU

    def _batch(self, waveforms, lengths) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self._device()
        if isinstance(waveforms, torch.Tensor):
            if waveforms.dim() == 1:
                waveforms = waveforms[None]
            if waveforms.dim() != 2:
                raise ValueError(f"waveforms must be [batch, samples], got shape {tuple(waveforms.shape)}")
            if lengths is not None:
                lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
            return waveforms.to(device=device, dtype=torch.float32), lengths
        if not isinstance(waveforms, Sequence) or not len(waveforms):
            raise ValueError("waveforms must be a [batch, samples] tensor or a non-empty list of 1-D waveforms")
        if lengths is not None:
            raise ValueError("lengths are taken from the waveforms when a list is given")
        waves = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waveforms]
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long, device=device)
        batch = nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device)
        return batch, lengths

    def _check_rate(self, sample_rate: int | None) -> None:
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(
                f"this student takes {self.sample_rate} Hz mono audio, got sample_rate={sample_rate}: resample it "
                f"first (e.g. sslc.data.load_audio(path) reads any file at {self.sample_rate} Hz)"
            )

    def extract_features(self, waveforms, lengths=None, sample_rate: int | None = None) -> dict:
        self._check_rate(sample_rate)
        batch, lengths = self._batch(waveforms, lengths)
        output = self.encoder(batch, lengths)
        return {
            "hidden_states": list(output.hidden_states),
            "last_hidden_state": output.last_hidden_state,
            "frame_lengths": output.frame_lengths,
        }

    def forward(self, waveforms, lengths=None, sample_rate: int | None = None) -> list[torch.Tensor]:
        return self.extract_features(waveforms, lengths, sample_rate)["hidden_states"]


def load_student(
    path: str | os.PathLike, map_location="cpu", quantize: bool = True, budget: str | float | None = None
) -> ExportedStudent:
    """An exported student in eval mode on `map_location`; int8 students are re-quantized (on CPU) unless
    `quantize=False`. It takes 16 kHz mono waveforms and returns hidden states: see `ExportedStudent`.

    budget: only for an anytime file (`sslc.runs.anytime_file`), which holds every size: the student of its front
    point with the best score within the budget ("20GMACs", "3e10", or "40%" of the teacher's MACs; MACs of one
    10 s waveform), extracted as an ordinary student.
    """
    payload = read_payload(path, map_location=map_location)
    if payload.get("format") == ANYTIME_FORMAT:
        if budget is None:
            raise UserError(f"{path} is an anytime file holding every size: pass budget= (e.g. '20GMACs' or '40%') "
                            "to get one student, or use sslc.load_anytime(path) for the whole model")
        from sslc.runs.anytime_file import anytime_from_payload  # the elastic model needs sslc.compress

        return anytime_from_payload(payload, path).student(budget)
    if budget is not None:
        raise UserError(f"{path} is an ordinary student file of one fixed size: budget= applies only to anytime "
                        "files (sslc-anytime); load it without budget=")
    check_student_payload(payload, path)
    encoder = build_from_payload(payload, quantize=quantize)
    quantized = quantize and (payload.get("compression") or {}).get("quantize") == "int8"
    if isinstance(map_location, (str, torch.device)) and not quantized:  # int8 kernels run on CPU only
        encoder = encoder.to(map_location)
    metadata = {k: payload.get(k) for k in ("teacher", "compression", "provenance", "metrics")}
    config = EncoderConfig.from_dict(payload["architecture"])
    return ExportedStudent(encoder, config, metadata).eval()
