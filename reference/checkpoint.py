"""Loading official FlexiCodec checkpoints into the reference model (spec §12).

Nothing is unpickled and nothing is downloaded: weights come from safetensors files, or from
a SenseVoiceSmall `model.pt` read with `torch.load(weights_only=True)`. Unlike the official
`load_state_dict(strict=False)`, a missing key or a shape that does not fit the config is an
error naming the keys; keys of parts FlexiCodec never runs are skipped and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import FlexiCodecConfig, SenseVoiceConfig
from .errors import CheckpointError
from .frontend import DEFAULT_CMVN_PATH
from .model import FlexiCodec
from .sensevoice import SENSEVOICE_UNUSED_PREFIXES, sensevoice_config_from_state_dict
from .weight_norm import normalise_weight_norm_keys

SENSEVOICE_PREFIX = "semantic_model."
# Parts of checkpoints that inference never runs: SenseVoice's extra blocks and CTC head, and
# the training-only heads (REPA; the fixed-window MAE and AR heads, `attach_training_heads`).
TRAINING_HEADS = ("repa_mlp.", "mae_head.", "ar_predictor.")
UNUSED_PREFIXES = tuple(SENSEVOICE_PREFIX + p for p in SENSEVOICE_UNUSED_PREFIXES) + TRAINING_HEADS


@dataclass
class LoadReport:
    """What a load did: where SenseVoice came from and which keys were skipped."""

    skipped: list[str] = field(default_factory=list)
    sensevoice_source: str = ""
    upcast_dtypes: set[str] = field(default_factory=set)

    def summary(self) -> str:
        groups = sorted({re.sub(r"\.\d+\..*$|\.(weight|bias)$", "", k) for k in self.skipped})
        text = f"SenseVoice weights from {self.sensevoice_source}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unused keys ({', '.join(groups)})"
        if self.upcast_dtypes:
            text += f"; upcast {', '.join(sorted(self.upcast_dtypes))} tensors to float32"
        return text


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Read tensors from a `.safetensors` file or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no such file: {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file
        raise CheckpointError(f"{what}: cannot read {str(path)!r} as a checkpoint: {e}") from e
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{what}: {str(path)!r} does not hold a mapping of tensors")
    return data


def _to_float32(state_dict: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            report.upcast_dtypes.add(str(value.dtype).replace("torch.", ""))
            value = value.float()
        out[key] = value
    return out


def build_from_state_dicts(
    config: FlexiCodecConfig,
    checkpoint: dict[str, torch.Tensor],
    sensevoice: dict[str, torch.Tensor] | None = None,
    sensevoice_config: SenseVoiceConfig | None = None,
    cmvn_path: str | Path = DEFAULT_CMVN_PATH,
) -> tuple[FlexiCodec, LoadReport]:
    """Build the reference model and load every weight it needs.

    SenseVoice weights come from the checkpoint's `semantic_model.*` keys when present,
    otherwise from `sensevoice` (SenseVoiceSmall's own keys, no prefix). The SenseVoice
    architecture is read from the weights' shapes; `sensevoice_config` supplies what shapes do
    not show (the number of heads).
    """
    report = LoadReport()
    state = _to_float32(normalise_weight_norm_keys(checkpoint), report)
    if not any(k.startswith(SENSEVOICE_PREFIX) for k in state):
        if sensevoice is None:
            raise CheckpointError(
                "checkpoint: has no semantic_model.* (SenseVoice) weights; pass "
                "sensevoice_small_path, the SenseVoiceSmall folder with model.pt"
            )
        state.update({SENSEVOICE_PREFIX + k: v for k, v in _to_float32(sensevoice, report).items()})
        report.sensevoice_source = "the SenseVoiceSmall model.pt"
    else:
        report.sensevoice_source = "the checkpoint (semantic_model.*)"
    heads = (sensevoice_config or SenseVoiceConfig()).attention_heads
    sv_config = sensevoice_config_from_state_dict(state, heads=heads, prefix=SENSEVOICE_PREFIX)

    report.skipped = sorted(k for k in state if k.startswith(UNUSED_PREFIXES))
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}

    model = FlexiCodec(config, sv_config, cmvn_path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [
            f"{what} {len(keys)} key(s) {keys[:8]}{' ...' if len(keys) > 8 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CheckpointError("checkpoint does not fit the config: " + "; ".join(parts))
    wrong = [
        f"{k}: checkpoint {list(state[k].shape)}, config expects {list(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint does not fit the config: {len(wrong)} shape mismatch(es): "
            + "; ".join(wrong[:5])
        )
    model.load_state_dict(state, strict=True)
    return model.eval(), report
