"""A student as an s3prl upstream: a directory with `expert.py` (`UpstreamExpert`), `hubconf.py` and the student
as TorchScript (`model.pt`, see `torchscript_file`), so it runs with torch alone.

s3prl's contract (`s3prl/upstream/example/expert.py`): `UpstreamExpert(ckpt)` ; `forward(wavs: list[Tensor])`
takes 16 kHz mono waveforms of any lengths and returns {"hidden_states": [B, T, D] per layer (index 0 = the input
of the first layer), "last_hidden_state": ...}; `get_downsample_rates(key)` = 320 (the CNN's strides). Copy the
directory to `s3prl/upstream/sslc_student/` and add `from .upstream.sslc_student.hubconf import *` to s3prl's
`hub.py` to run `run_downstream.py -u sslc_student -k PATH/model.pt`, or import `hubconf.sslc_student` directly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..encoder import SpeechEncoder
from .directory import write_directory
from .torchscript_file import write_torchscript

MODEL_FILE = "model.pt"

_EXPERT = '''"""An sslc student as an s3prl upstream; needs torch only (the student is TorchScript: model.pt)."""

import os

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

SAMPLE_RATE = 16000
DOWNSAMPLE_RATE = {rate}
NUM_LAYERS = {layers}


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt=None, model_config=None, **kwargs):
        super().__init__()
        ckpt = ckpt or os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.pt")
        self.model = torch.jit.load(ckpt, map_location="cpu")

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs):
        device = wavs[0].device
        lengths = torch.tensor([len(wav) for wav in wavs], dtype=torch.long, device=device)
        padded = pad_sequence([wav.reshape(-1).float() for wav in wavs], batch_first=True)
        outputs = self.model.to(device)(padded, lengths)
        hidden_states = list(outputs[: NUM_LAYERS + 1])
        return {{"hidden_states": hidden_states, "last_hidden_state": outputs[NUM_LAYERS + 1]}}
'''

_HUBCONF = '''from .expert import UpstreamExpert as _UpstreamExpert


def sslc_student(ckpt=None, *args, **kwargs):
    """The exported sslc student (ckpt: its model.pt; default: the one beside this file)."""
    return _UpstreamExpert(ckpt, *args, **kwargs)
'''


def write_s3prl(encoder: SpeechEncoder, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
    def write(tmp: Path) -> None:
        write_torchscript(encoder, tmp / MODEL_FILE, metadata)
        rate = math.prod(conv.stride for conv in encoder.config.conv_layers)
        (tmp / "expert.py").write_text(_EXPERT.format(rate=rate, layers=encoder.config.num_layers), encoding="utf-8")
        (tmp / "hubconf.py").write_text(_HUBCONF, encoding="utf-8")
        (tmp / "__init__.py").write_text("", encoding="utf-8")

    return write_directory(directory, write, metadata)
