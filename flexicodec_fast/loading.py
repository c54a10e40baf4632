"""`prepare_model`: build a FlexiCodec from official files, offline (design §6); the
released files come from the Hugging Face cache (`hub`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import hub
from .reference.checkpoint import build_from_state_dicts, read_state_dict
from .reference.config import FlexiCodecConfig, SenseVoiceConfig
from .reference.errors import CheckpointError, InputError
from .reference.frontend import DEFAULT_CMVN_PATH
from .reference.model import FlexiCodec

log = logging.getLogger("flexicodec_fast")

BUILTIN_DIR = Path(__file__).resolve().parent / "assets" / "builtin"


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` -> CUDA when available, else CPU; anything else as torch understands it."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(
            f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} was asked for, but CUDA is not available here")
    return resolved


def sensevoice_files(path: str | Path | None):
    """(state dict or None, config or None, am.mvn path) from a SenseVoiceSmall folder."""
    if path is None:
        return None, None, DEFAULT_CMVN_PATH
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"sensevoice_small_path: expected a folder, got {str(folder)!r}")
    weights = folder / "model.pt"
    state = read_state_dict(weights, "sensevoice_small_path") if weights.is_file() else None
    config_file = folder / "config.yaml"
    config = SenseVoiceConfig.from_yaml(config_file) if config_file.is_file() else None
    cmvn = folder / "am.mvn"
    return state, config, cmvn if cmvn.is_file() else DEFAULT_CMVN_PATH


def prepare_model(
    ckpt_path: str | Path | None = None,
    config_path: str | Path | None = None,
    sensevoice_small_path: str | Path | None = None,
    device: str | torch.device = "auto",
    *,
    repo_id: str | None = None,
    revision: str | None = None,
) -> FlexiCodec:
    """Load a FlexiCodec in eval mode on `device`; nothing is downloaded or unpickled.

    With no arguments, the small built-in model bundled with the package (trained here mostly
    on synthetic espeak-ng speech, then on human recordings too; see docs/builtin_model.md)
    is loaded.

    The released model (what the official `prepare_model()` loads): run
    `flexicodec-fast download` once, then `prepare_model("released")` reads
    `12hz_v1_half.safetensors` and `12hz_v1_half_config.yaml` of `jiaqili3/flexicodec` and
    SenseVoiceSmall of `FunAudioLLM/SenseVoiceSmall` from the Hugging Face cache, without a
    network (`repo_id` / `revision` pick another repository or revision of the first two;
    any path given explicitly is used instead of its released file). Needs the `hub` extra.

    ckpt_path: FlexiCodec weights (`.safetensors`, fp32 or fp16; or a weights-only `.pt`),
        or "released".
    config_path: the official-layout config YAML (top-level `model:` mapping).
    sensevoice_small_path: SenseVoiceSmall folder (`model.pt`, `config.yaml`, `am.mvn`), used
        when the checkpoint has no `semantic_model.*` weights; its `am.mvn` (else the bundled
        official copy) sets the front-end's CMVN.
    Each path may also be `hf://org/repo/path/in/repo` (a folder: `hf://org/repo`), read from
        the Hugging Face cache (see `flexicodec_fast.hub`).
    Returns the reference `FlexiCodec`; `model.load_report` says what was loaded and skipped.
    """
    if hub.names_released(ckpt_path) or repo_id is not None or revision is not None:
        given = {
            "ckpt_path": None if hub.names_released(ckpt_path) else ckpt_path,
            "config_path": config_path,
            "sensevoice_small_path": sensevoice_small_path,
        }
        released = hub.released_files(repo_id, revision)
        ckpt_path, config_path, sensevoice_small_path = (
            released[name] if value is None else value for name, value in given.items()
        )
    elif ckpt_path is None and config_path is None and sensevoice_small_path is None:
        if not (BUILTIN_DIR / "model.safetensors").is_file():
            raise CheckpointError(
                "prepare_model(): the built-in default model is not bundled in this install; "
                "pass ckpt_path and config_path (official FlexiCodec files) and, if the "
                "checkpoint has no semantic_model.* weights, sensevoice_small_path"
            )
        ckpt_path, config_path = BUILTIN_DIR / "model.safetensors", BUILTIN_DIR / "config.yaml"
    if ckpt_path is None or config_path is None:
        raise CheckpointError(
            "prepare_model(): ckpt_path and config_path go together (nothing is downloaded), got "
            f"ckpt_path={ckpt_path!r}, config_path={config_path!r}"
        )
    target = resolve_device(device)
    ckpt_path = hub.local_file(ckpt_path, "ckpt_path")
    config = FlexiCodecConfig.from_yaml(hub.local_file(config_path, "config_path"))
    checkpoint = read_state_dict(ckpt_path, "ckpt_path")
    sensevoice_folder = hub.local_folder(sensevoice_small_path, "sensevoice_small_path")
    sv_state, sv_config, cmvn = sensevoice_files(sensevoice_folder)
    model, report = build_from_state_dicts(config, checkpoint, sv_state, sv_config, cmvn)
    log.info("loaded %s: %s", ckpt_path, report.summary())
    model.load_report = report
    return model.to(target).eval()
