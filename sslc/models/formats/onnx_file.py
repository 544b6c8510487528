"""A student as an ONNX graph (onnxruntime runs it), and a student split into two graphs (client / server).

Exported with `torch.onnx.export(dynamo=True)` at opset `OPSET`, with dynamic batch and time axes: inputs
`waveforms` [batch, samples] float32 16 kHz mono and `lengths` [batch] int64 (samples per row; the full length when
nothing is padded); outputs `hidden_state_0` .. `hidden_state_L` [batch, frames, D], `last_hidden_state` and
`frame_lengths` [batch] (see `graphs.StudentGraph`). The student's architecture, compression and provenance are
in the model's metadata (`sslc` property, JSON).

Split: `client.onnx` (waveforms, lengths) -> hidden_state_0 .. hidden_state_k, frame_lengths; `server.onnx`
(stream = hidden_state_k, frame_lengths) -> hidden_state_{k+1} .. hidden_state_L, last_hidden_state.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from sslc.errors import UserError, first_line
from sslc.files import write_atomically

from ..encoder import SpeechEncoder
from .graphs import ClientGraph, ServerGraph, StudentGraph, example_batch, output_names

OPSET = 18
MIN_SAMPLES = 400  # one frame of the wav2vec 2.0 front end (receptive field 400 samples)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter translates through it)
    except ImportError:
        raise UserError("the onnx format needs onnx and onnxscript: pip install 'sslc[onnx]'") from None


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], outputs: list[str],
            dynamic_shapes: dict, metadata: dict | None) -> Path:
    _require_onnx()
    import onnx

    def write(tmp: Path) -> None:
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registration.level
        registration.setLevel(logging.ERROR)  # "torchvision is not installed": its ops are not needed here
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
                program = torch.onnx.export(
                    module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                    output_names=outputs, dynamic_shapes=dynamic_shapes, verbose=False, optimize=True,
                )
        except Exception as error:  # the exporter's errors run for pages: one line, nothing written
            raise UserError(f"the ONNX export failed: {first_line(error)[:200]}") from None
        finally:
            registration.setLevel(level)
        model = program.model_proto
        onnx.helper.set_model_props(model, {"sslc": json.dumps(metadata or {})})
        onnx.save(model, str(tmp))

    return write_atomically(path, write)


def _dims():
    batch = torch.export.Dim("batch", min=1)
    samples = torch.export.Dim("samples", min=MIN_SAMPLES)
    return batch, samples


def write_onnx(encoder: SpeechEncoder, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """The whole student as one graph at `path`."""
    batch, samples = _dims()
    outputs = output_names(encoder.config.num_layers) + ["last_hidden_state", "frame_lengths"]
    return _export(StudentGraph(encoder), example_batch(), Path(path), ["waveforms", "lengths"], outputs,
                   {"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}}, metadata)


def write_split_onnx(encoder: SpeechEncoder, directory: str | os.PathLike, until_layer: int,
                     metadata: dict | None = None) -> tuple[Path, Path]:
    """`client.onnx` (front end + layers 0..until_layer-1) and `server.onnx` (the rest) in `directory`."""
    depth = encoder.config.num_layers
    if not 0 <= until_layer <= depth:
        raise UserError(f"--split-layer must be 0..{depth} for this student of {depth} layers, got {until_layer}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {}, split_layer=until_layer)
    batch, samples = _dims()
    client = _export(
        ClientGraph(encoder, until_layer), example_batch(), directory / "client.onnx", ["waveforms", "lengths"],
        output_names(until_layer) + ["frame_lengths"],
        {"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}}, meta,
    )
    with torch.no_grad():
        split = ClientGraph(encoder, until_layer)(*example_batch())
    frames = torch.export.Dim("frames", min=1)
    server = _export(
        ServerGraph(encoder, until_layer), (split[-2], split[-1]), directory / "server.onnx",
        ["stream", "frame_lengths"], output_names(depth, first=until_layer + 1) + ["last_hidden_state"],
        {"stream": {0: batch, 1: frames}, "frame_lengths": {0: batch}}, meta,
    )
    return client, server


class OnnxRuntimeStudent(torch.nn.Module):
    """An ONNX student file run by onnxruntime on CPU, called like the encoder (`model(waveforms)` -> the hidden
    states as tensors), so `sslc.metrics.compare_latency` times it beside torch in the same run. `threads`:
    onnxruntime's intra-op threads (torch's thread count when None, so both use the same cores)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install 'sslc[onnx]'") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.threads = options.intra_op_num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        waveforms = waveforms.detach().cpu().float()
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long)
        outputs = self.session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.cpu().numpy()})
        return [torch.from_numpy(o) for o, name in zip(outputs, self.names) if name.startswith("hidden_state_")]
