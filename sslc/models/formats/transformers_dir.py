"""A student as a transformers model directory (`AutoModel.from_pretrained(directory)` loads it).

Plain: a student that the teacher family's own config can describe (every layer with the same heads and FFN
units, all heads of the width, i.e. heads x head_dim = hidden width, no low-rank factors; per-layer CNN channels
are `conv_dim`; WavLM: its heads in the teacher's order) becomes a `HubertConfig` / `Wav2Vec2Config` /
`WavLMConfig` + `model.safetensors` that `HubertModel.from_pretrained(directory)` loads with no custom code. The
weights are renamed by the inverse of `hf_import`'s table, and the written config must map back to the student's
architecture through `hf_import.config_from_hf`, so both directions agree.

Any other student (pruned heads, per-layer shapes, low-rank factors, a thin WavLM whose gate reads the teacher's
residual channels) gets a remote-code directory: `config.json` with `auto_map`, a small `modeling_sslc_student.py`,
and sslc's own model code (`sslc/models/{config,components,encoder}.py`, copied as they are), so
`AutoModel.from_pretrained(directory, trust_remote_code=True)` needs only torch and transformers.

Both take `input_values` [B, S] (16 kHz mono float) and an optional `attention_mask` [B, S] (1 on real samples);
`output_hidden_states=True` gives the student's hidden states. `sslc.json` beside them holds the provenance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from sslc.errors import UserError

from ..config import EncoderConfig
from ..encoder import SpeechEncoder
from ..hf_import import HF_IGNORED, config_from_hf, hf_key_to_ours
from .directory import write_directory

_CLASSES = {"hubert": ("HubertConfig", "HubertModel"), "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
            "wavlm": ("WavLMConfig", "WavLMModel")}


def plain_problems(config: EncoderConfig) -> list[str]:
    """Why the family's own transformers config cannot describe this student (empty: it can)."""
    problems = []
    layers = config.layers
    if not layers:
        problems.append("no Transformer layers")
    shapes = {(layer.heads, layer.ffn_dim) for layer in layers}
    if len(shapes) > 1:
        problems.append("heads or FFN units differ between layers")
    if any(layer.ranks for layer in layers):
        problems.append("low-rank factors")
    if layers and layers[0].heads * config.head_dim != config.embed_dim:
        problems.append(f"{layers[0].heads} heads of {config.head_dim} in a {config.embed_dim}-wide model")
    if any(layer.heads == 0 or layer.ffn_dim == 0 for layer in layers):
        problems.append("a layer without heads or FFN units")
    if config.family != "hubert" and not config.projection_layer_norm:
        problems.append("no LayerNorm before the feature projection")
    if config.relative_position is not None:
        if any(layer.head_sources() != list(range(config.relative_position.heads)) for layer in layers):
            problems.append("WavLM heads that are not the teacher's, in its order (relative position table)")
        if config.residual_sources() != list(range(config.embed_dim)):
            problems.append("a thin WavLM (its gate reads the teacher-width residual stream)")
    # The inverse must round-trip through hf_import: anything the checks above miss falls back to remote code.
    if not problems and _comparable(config_from_hf(hf_config(config))) != _comparable(config):
        problems.append("the family's transformers config does not describe it exactly")
    return problems


def hf_config(config: EncoderConfig):
    """The transformers config of a student `plain_problems` accepts."""
    import transformers

    config_class = getattr(transformers, _CLASSES[config.family][0])
    layer = config.layers[0]
    kwargs = dict(
        hidden_size=config.embed_dim, num_hidden_layers=config.num_layers, num_attention_heads=layer.heads,
        intermediate_size=layer.ffn_dim, hidden_act="gelu", feat_extract_activation="gelu",
        conv_dim=[c.channels for c in config.conv_layers], conv_kernel=[c.kernel for c in config.conv_layers],
        conv_stride=[c.stride for c in config.conv_layers], conv_bias=config.conv_bias,
        feat_extract_norm=config.extractor_norm, do_stable_layer_norm=config.layer_norm_first,
        num_conv_pos_embeddings=config.pos_conv_kernel, num_conv_pos_embedding_groups=config.pos_conv_groups,
        layer_norm_eps=config.layer_norm_eps,
    )
    if config.family == "hubert":
        kwargs["feat_proj_layer_norm"] = config.projection_layer_norm
    if config.relative_position is not None:
        kwargs.update(num_buckets=config.relative_position.num_buckets,
                      max_bucket_distance=config.relative_position.max_distance)
    return config_class(**kwargs)


def _comparable(config: EncoderConfig) -> dict:
    """The architecture as a transformers config can hold it: identity indices as None, no dropout."""
    plain = dataclasses.replace(
        config, dropout=0.0, residual_index=None,
        layers=[dataclasses.replace(layer, head_index=None) for layer in config.layers],
    )
    return plain.to_dict()


def write_plain(encoder: SpeechEncoder, directory: Path) -> None:
    import transformers

    config = hf_config(encoder.config)  # plain_problems checked that it round-trips
    model = getattr(transformers, _CLASSES[encoder.config.family][1])(config).eval()
    ours = encoder.state_dict()
    state, used = {}, set()
    for key, value in model.state_dict().items():
        if key in HF_IGNORED:
            state[key] = value  # SpecAugment's mask embedding: training only, kept at its initial value
            continue
        name = hf_key_to_ours(key)
        if name is None or name not in ours or tuple(ours[name].shape) != tuple(value.shape):
            raise AssertionError(f"no weight of the student for transformers' {key}")
        state[key] = ours[name].detach().clone()
        used.add(name)
    if used != set(ours):
        raise AssertionError(f"student weights without a place in transformers: {sorted(set(ours) - used)[:4]}")
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(directory), safe_serialization=True)


# ---- remote code --------------------------------------------------------------------------------------------------
MODEL_TYPE = "sslc_student"
_SOURCES = {"config.py": "sslc_config.py", "components.py": "sslc_components.py", "encoder.py": "sslc_encoder.py"}

_CONFIGURATION = '''"""The configuration of a sslc student: its whole architecture (sslc's EncoderConfig) as one dict."""

from transformers import PretrainedConfig


class SslcStudentConfig(PretrainedConfig):
    model_type = "sslc_student"

    def __init__(self, architecture=None, **kwargs):
        self.architecture = architecture or {}
        super().__init__(**kwargs)
'''

_MODELING = '''"""A sslc student as a transformers model: sslc's own encoder code (sslc_*.py beside this file), torch only."""

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_sslc_student import SslcStudentConfig
from .sslc_config import EncoderConfig
from .sslc_encoder import SpeechEncoder


class SslcStudentModel(PreTrainedModel):
    config_class = SslcStudentConfig
    base_model_prefix = "sslc"
    main_input_name = "input_values"

    def __init__(self, config):
        super().__init__(config)
        self.encoder = SpeechEncoder(EncoderConfig.from_dict(config.architecture))
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from model.safetensors

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # transformers builds the model on the meta device and fills only what the weights file holds; the index
        # buffers sslc derives from the architecture (not stored) are rebuilt here.
        stored = set(model.encoder.state_dict())
        with torch.device("cpu"):
            fresh = SpeechEncoder(EncoderConfig.from_dict(model.config.architecture))
        for name, buffer in fresh.named_buffers():
            if name not in stored:
                owner, _, leaf = name.rpartition(".")
                module = model.encoder.get_submodule(owner)
                module._buffers[leaf] = buffer.to(model.device)
        return model

    def forward(self, input_values, attention_mask=None, output_hidden_states=None, return_dict=None, **kwargs):
        lengths = None if attention_mask is None else attention_mask.long().sum(-1)
        output = self.encoder(input_values, lengths)
        hidden = tuple(output.hidden_states) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=output.last_hidden_state, hidden_states=hidden)
'''


def write_remote_code(encoder: SpeechEncoder, directory: Path) -> None:
    from safetensors.torch import save_file

    source_dir = Path(__file__).resolve().parent.parent
    for name, target in _SOURCES.items():
        text = (source_dir / name).read_text(encoding="utf-8")
        for module, renamed in _SOURCES.items():  # relative imports between the copied files
            text = re.sub(rf"from \.{module[:-3]} import", f"from .{renamed[:-3]} import", text)
        (directory / target).write_text(text, encoding="utf-8")
    (directory / "configuration_sslc_student.py").write_text(_CONFIGURATION, encoding="utf-8")
    (directory / "modeling_sslc_student.py").write_text(_MODELING, encoding="utf-8")
    config = {
        "model_type": MODEL_TYPE, "architectures": ["SslcStudentModel"],
        "auto_map": {"AutoConfig": "configuration_sslc_student.SslcStudentConfig",
                     "AutoModel": "modeling_sslc_student.SslcStudentModel"},
        "architecture": encoder.config.to_dict(), "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = {f"encoder.{k}": v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def write_transformers(encoder: SpeechEncoder, directory: str | os.PathLike, metadata: dict | None = None,
                       remote_code: bool | None = None) -> dict:
    """Write the directory; `remote_code` None: plain where `plain_problems` allows, else remote code. Returns
    {"kind": "plain" | "remote-code", "why": [reasons for remote code]}."""
    problems = plain_problems(encoder.config)
    if remote_code is False and problems:
        raise UserError("this student needs remote code in transformers: " + "; ".join(problems))
    plain = not problems and not remote_code

    def write(tmp: Path) -> None:
        with torch.no_grad():
            (write_plain if plain else write_remote_code)(encoder.float().eval(), tmp)

    write_directory(directory, write, metadata)
    return {"kind": "plain" if plain else "remote-code", "why": problems}
