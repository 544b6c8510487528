"""A student in the formats other tools run: ONNX (onnxruntime), TorchScript (torch alone), a transformers
directory (`from_pretrained`) and an s3prl upstream. Each writer takes a float `SpeechEncoder` and the student's
metadata (architecture, compression, provenance, metrics: JSON) and writes files that load without sslc.

sslc's own file (torch.save, or safetensors + JSON with no pickle) is written by `sslc.runs.student_file`; its
safetensors container is `safetensors_file` here. Heavy libraries (onnx, transformers) are imported by the writer
that needs them.
"""

from __future__ import annotations

import os

CONTAINERS = ("sslc", "safetensors")  # sslc.runs.student_file writes these (the whole payload, anytime files too)
CONVERSIONS = ("onnx", "torchscript", "transformers", "s3prl")
FORMATS = CONTAINERS + CONVERSIONS
DIRECTORIES = ("transformers", "s3prl")  # formats that write a directory (so does a split ONNX pair)
SUFFIXES = {".safetensors": "safetensors", ".pt": "sslc", ".pth": "sslc", ".onnx": "onnx"}
DEFAULT = "safetensors"


def format_for(path: str | os.PathLike | None) -> str:
    """The format an output path's suffix names (a `.pt` file stays sslc's torch.save file); else `DEFAULT`."""
    if path is None:
        return DEFAULT
    return SUFFIXES.get(os.path.splitext(str(path))[1].lower(), DEFAULT)


def write_conversion(fmt: str, encoder, path: str | os.PathLike, metadata: dict,
                     split_layer: int | None = None, remote_code: bool | None = None) -> dict:
    """Write `encoder` in one of `CONVERSIONS`; returns what the CLI reports ({"files": [...], "notes": [...]})."""
    if split_layer is not None and fmt != "onnx":
        raise ValueError("a split (client / server) export is only written as ONNX")
    if fmt == "onnx":
        from .onnx_file import write_onnx, write_split_onnx

        if split_layer is None:
            return {"files": [str(write_onnx(encoder, path, metadata))], "notes": []}
        client, server = write_split_onnx(encoder, path, split_layer, metadata)
        return {"files": [str(client), str(server)], "notes": [f"split after layer {split_layer}"]}
    if fmt == "torchscript":
        from .torchscript_file import write_torchscript

        return {"files": [str(write_torchscript(encoder, path, metadata))], "notes": []}
    if fmt == "transformers":
        from .transformers_dir import write_transformers

        written = write_transformers(encoder, path, metadata, remote_code)
        note = ("plain transformers config, no custom code" if written["kind"] == "plain" else
                "remote code (trust_remote_code=True): " + "; ".join(written["why"] or ["asked for"]))
        return {"files": [str(path)], "notes": [note], "kind": written["kind"]}
    if fmt == "s3prl":
        from .s3prl_dir import write_s3prl

        return {"files": [str(write_s3prl(encoder, path, metadata))], "notes": []}
    raise ValueError(f"format must be one of {CONVERSIONS}, got {fmt!r}")
