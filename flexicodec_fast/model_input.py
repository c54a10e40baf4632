"""What `fast_encode`, `fast_decode` and `Engine` accept as their model.

* our `FlexiCodec` (from `flexicodec_fast.prepare_model`);
* the official `prepare_model` dict layout `{"model": ..., "feature_extractor": ...}`, whose
  model is ours or
* an official `FlexiCodec` module as it is. It is recognised by duck typing, never imported:
  an `nn.Module` whose `state_dict()` has the official keys (spec §12.3). It is converted once
  into ours (cached per object, rebuilt when its parameters, device or dtype change) with the
  same loader as official checkpoints (`reference.checkpoint.build_from_state_dicts`).

The official constructor's keyword arguments (spec §12.1) come from, in this order:
1. a `config` attribute holding them (a mapping, optionally under `model:`, the layout of the
   official config YAML; or our `FlexiCodecConfig`), which anyone may set on the module;
2. otherwise the module itself:
   - the keywords the official constructor keeps on the module under their own names
     (`OFFICIAL_ATTRIBUTES`);
   - sizes from the state dict's shapes (widths, rates, layer and codebook counts);
   - the attention settings of each transformer from its first layer's `self_attn`
     (`num_heads`, `causal`, `context`);
   - FSQ levels from the `semantic_vq.fsq._levels` buffer (non-persistent, so not in the
     state dict); ConvNeXt causality from the blocks' depthwise padding (3: non-causal,
     0: causal, spec §7.1); mean-pooling query initialisation from the absence of a
     `query_token` parameter.
   Whatever cannot be found is named in an `InputError`, which says how to set `config`.
"""

from __future__ import annotations

import re
import weakref

import torch
from torch import nn

from .reference.checkpoint import build_from_state_dicts
from .reference.config import FlexiCodecConfig, SenseVoiceConfig
from .reference.errors import CheckpointError, InputError
from .reference.model import FlexiCodec
from .reference.weight_norm import normalise_weight_norm_keys

# Keys every official FlexiCodec state dict has (after weight-norm spelling is normalised).
OFFICIAL_KEYS = (
    "dac.encoder.block.0.weight_v",
    "dac.decoder.model.0.weight_v",
    "dac.quantizer.quantizers.0.codebook.weight",
    "convnext_encoder.0.weight_v",
    "semantic_vq.fsq.project_in.weight",
    "semantic_model.embed.weight",
)
# Constructor keywords the official `FlexiCodec.__init__` stores on the module under their
# own names (read from its source, amphionspace/FlexiCodec, modeling_flexicodec.py).
OFFICIAL_ATTRIBUTES = (
    "sample_rate",
    "semantic_downsample_factor",
    "lambda_distill_loss",
    "use_similarity_alignment",
    "similarity_threshold",
    "use_dynamic_similarity_threshold",
    "similarity_threshold_lower",
    "similarity_threshold_upper",
    "max_tokens_per_group",
    "use_query_token_aggregator",
    "use_bottleneck_transformer",
    "semantic_model_type",
    "sensevoice_prepend_inputs",
    "decode_semantic_for_codec",
    "sensevoice_sim_layer_idx",
    "sensevoice_semantic_layer_idx",
)
BOTTLENECK = "bottleneck_transformer.transformer.layers"
AGGREGATORS = {
    "semantic": "semantic_aggregator.transformer.transformer.layers",
    "acoustic": "acoustic_aggregator.transformer.transformer.layers",
}

# official module -> (signature of its parameters, our converted model)
_converted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_model(model) -> FlexiCodec:
    """Our FlexiCodec for `model` (ours, the official dict layout, or an official module)."""
    if isinstance(model, dict) and "model" in model:
        model = model["model"]
    if isinstance(model, FlexiCodec):
        return model
    if isinstance(model, nn.Module):
        return _from_official(model)
    raise InputError(
        f"model: expected the FlexiCodec returned by flexicodec_fast.prepare_model, got "
        f"{type(model).__name__}"
    )


def _signature(module: nn.Module) -> tuple:
    first = next(module.parameters(), None)
    placement = None if first is None else (first.device, first.dtype)
    return sum(p._version for p in module.parameters()), placement


def _from_official(module: nn.Module) -> FlexiCodec:
    signature = _signature(module)
    cached = _converted.get(module)
    if cached is not None and cached[0] == signature:
        return cached[1]
    state = normalise_weight_norm_keys(module.state_dict())
    missing = [k for k in OFFICIAL_KEYS if k not in state]
    if missing:
        raise InputError(
            f"model: expected our FlexiCodec, the official prepare_model dict or an official "
            f"FlexiCodec module; got a {type(module).__name__} whose state_dict() lacks the "
            f"official keys {missing}"
        )
    heads = _attribute(module, "semantic_model.encoder.encoders0.0.self_attn.h")
    sensevoice = SenseVoiceConfig() if heads is None else SenseVoiceConfig(attention_heads=heads)
    try:
        config = official_config(module, state)
        ours, _ = build_from_state_dicts(config, state, sensevoice_config=sensevoice)
    except CheckpointError as e:
        raise InputError(f"model: the official FlexiCodec module does not convert: {e}") from e
    first = next(module.parameters(), None)
    ours = ours.to(first.device if first is not None else "cpu").eval()
    _converted[module] = (signature, ours)
    return ours


def _attribute(module: nn.Module, dotted: str):
    """`module.a.0.b` by a dotted path (digits index sequences), or None where absent."""
    value = module
    for name in dotted.split("."):
        if name.isdigit() and isinstance(value, (nn.Sequential, nn.ModuleList)):
            index = int(name)
            value = value[index] if index < len(value) else None
        else:
            value = getattr(value, name, None)
        if value is None:
            return None
    return value


def _count(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _attention(module: nn.Module, layers: str) -> dict:
    attn = _attribute(module, f"{layers}.0.self_attn")
    return {
        name: getattr(attn, name)
        for name in ("num_heads", "causal", "context")
        if hasattr(attn, name)
    }


def official_config(module: nn.Module, state: dict[str, torch.Tensor]) -> FlexiCodecConfig:
    """The official constructor's keyword arguments of `module` (see the module docstring)."""
    given = getattr(module, "config", None)
    if isinstance(given, FlexiCodecConfig):
        return given
    if isinstance(given, dict):
        return FlexiCodecConfig.from_dict(given.get("model", given))
    found: dict = {}
    missing: list[str] = []
    for name in OFFICIAL_ATTRIBUTES:
        if hasattr(module, name):
            found[name] = getattr(module, name)
        else:
            missing.append(name)
    found.update(_sizes(state))
    _attention_settings(module, state, found, missing)
    levels = _attribute(module, "semantic_vq.fsq._levels")
    if isinstance(levels, torch.Tensor):
        found["fsq_config"] = {"levels": [int(v) for v in levels.tolist()]}
    else:
        missing.append("fsq_config (no semantic_vq.fsq._levels buffer)")
    padding = _attribute(module, "convnext_encoder.1.dwconv.padding")
    if found["convnext_layers"] == 0:
        found["is_causal"] = False
    elif padding is not None and tuple(padding) in ((3,), (0,)):
        found["is_causal"] = tuple(padding) == (0,)
    else:
        missing.append("is_causal (convnext_encoder.1.dwconv.padding is not 3 or 0)")
    if missing:
        raise InputError(
            "model: cannot read the constructor config of the official FlexiCodec module; "
            f"missing: {', '.join(missing)}. Set it from the config file it was built from: "
            'module.config = yaml.safe_load(open(config_path))["model"]'
        )
    return FlexiCodecConfig.from_dict(found)


def _sizes(state: dict[str, torch.Tensor]) -> dict:
    """Everything the weights' shapes tell (spec §12.3)."""
    in_proj = state["dac.quantizer.quantizers.0.in_proj.weight_v"]  # [codebook_dim, latent, 1]
    encoder_blocks = _count(state, "dac.encoder.block") - 3  # first conv, Snake, last conv
    decoder_blocks = _count(state, "dac.decoder.model") - 3
    sizes = {
        "encoder_dim": int(state["dac.encoder.block.0.weight_v"].shape[0]),
        # stride convolutions have kernel 2 s
        "encoder_rates": [
            int(state[f"dac.encoder.block.{i}.block.4.weight_v"].shape[2]) // 2
            for i in range(1, encoder_blocks + 1)
        ],
        "decoder_rates": [
            int(state[f"dac.decoder.model.{i}.block.1.weight_v"].shape[2]) // 2
            for i in range(1, decoder_blocks + 1)
        ],
        "latent_dim": int(in_proj.shape[1]),
        "decoder_dim": int(state["dac.decoder.model.0.weight_v"].shape[0]),
        "n_codebooks": _count(state, "dac.quantizer.quantizers"),
        "codebook_size": int(state["dac.quantizer.quantizers.0.codebook.weight"].shape[0]),
        "codebook_dim": int(in_proj.shape[0]),
        "convnext_dim": int(state["convnext_encoder.0.weight_v"].shape[0]),
        "convnext_layers": _count(state, "convnext_encoder") - 1,
        "agg_use_mean_pooling_init": "semantic_aggregator.query_token" not in state,
    }
    layers = _count(state, BOTTLENECK)
    sizes["transformer_num_layers"] = layers
    if layers:
        ffn = state[f"{BOTTLENECK}.0.linear1.weight"]  # [dim_feedforward, dim]
        sizes["transformer_dim"] = int(ffn.shape[1])
        sizes["transformer_dim_feedforward"] = int(ffn.shape[0])
    layers = _count(state, AGGREGATORS["semantic"])
    if layers:
        ffn = state[f"{AGGREGATORS['semantic']}.0.linear1.weight"]
        sizes["agg_transformer_num_layers"] = layers
        sizes["agg_transformer_dim"] = int(ffn.shape[1])
        sizes["agg_transformer_dim_feedforward"] = int(ffn.shape[0])
    return sizes


def _attention_settings(module, state, found: dict, missing: list[str]) -> None:
    """Heads, causality and context of the bottleneck and aggregator transformers. The
    semantic aggregator is built with `transformer_context_frames`, the acoustic one with
    `agg_transformer_context_frames`."""
    wanted = []
    if _count(state, BOTTLENECK):
        wanted.append(
            (
                BOTTLENECK,
                {
                    "num_heads": "transformer_num_heads",
                    "causal": "transformer_causal",
                    "context": "transformer_context_frames",
                },
            )
        )
    if _count(state, AGGREGATORS["semantic"]):
        semantic = {"num_heads": "agg_transformer_num_heads", "causal": "agg_transformer_causal"}
        if not wanted:
            semantic["context"] = "transformer_context_frames"
        wanted.append((AGGREGATORS["semantic"], semantic))
        wanted.append((AGGREGATORS["acoustic"], {"context": "agg_transformer_context_frames"}))
    for layers, names in wanted:
        settings = _attention(module, layers)
        for attr, keyword in names.items():
            if attr in settings:
                found[keyword] = settings[attr]
            else:
                missing.append(f"{keyword} ({layers}.0.self_attn.{attr})")
