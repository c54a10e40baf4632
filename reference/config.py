"""Model configuration: the official constructor's keyword arguments, with its defaults.

The official `config.yaml` holds a top-level `model:` mapping that is passed as keyword
arguments to the official constructor, so every key it may contain is a field here and every
key left out takes the constructor default (spec §12.1). A key the official constructor does
not know is an error there too, and is one here.

Fields marked "extension" do not exist in the official model; they default to the official
behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import CheckpointError

# Keys of the official constructor that only select code paths we do not build (a custom
# semantic encoder module, the Wav2Vec2-BERT statistics, the distillation head of plain DAC).
_ACCEPTED_AND_UNUSED = {
    "semantic_encoder",
    "semantic_decoder",
    "semantic_model_path",
    "distill_projection_out_dim",
    "bottleneck_transformer_config",
    "semantic_codebook_dim",
    "skip_normalize",
}


@dataclass
class FlexiCodecConfig:
    sample_rate: int = 24000
    encoder_dim: int = 64
    encoder_rates: list[int] = field(default_factory=lambda: [2, 4, 8, 8])
    latent_dim: int | None = None
    decoder_dim: int = 1536
    decoder_rates: list[int] = field(default_factory=lambda: [8, 8, 4, 2])
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 1.0
    semantic_codebook_size: int = 16384
    fsq_config: dict | None = None
    convnext_dim: int = 768
    convnext_layers: int = 4
    decode_semantic_for_codec: bool = True
    is_causal: bool = True
    semantic_downsample_factor: float = 2
    ssl_dim: int = 1024
    lambda_distill_loss: float = 15.0
    use_similarity_alignment: bool = False
    similarity_threshold: float | None = None
    use_dynamic_similarity_threshold: bool = False
    similarity_threshold_lower: float = 0.8
    similarity_threshold_upper: float = 1.0
    max_tokens_per_group: int | None = 8
    semantic_model_type: str = "sensevoice"
    sensevoice_prepend_inputs: bool = True
    use_bottleneck_transformer: bool = False
    transformer_num_layers: int = 6
    transformer_dim: int = 512
    transformer_dim_feedforward: int = 2048
    transformer_num_heads: int = 8
    transformer_causal: bool = False
    transformer_context_frames: int = 24
    use_query_token_aggregator: bool = False
    agg_transformer_num_layers: int = 6
    agg_transformer_dim: int = 512
    agg_transformer_num_heads: int = 8
    agg_transformer_dim_feedforward: int = 2048
    agg_transformer_causal: bool = False
    agg_use_mean_pooling_init: bool = True
    agg_transformer_context_frames: int | None = None
    sensevoice_sim_layer_idx: int | None = None
    sensevoice_semantic_layer_idx: int | None = None
    # extension: symmetric local attention (key s visible from query t iff |t - s| <= window)
    # for models trained with the paper's local windowed attention; None = full attention.
    transformer_window: int | None = None
    agg_transformer_window: int | None = None
    # extension (issue #8, docs/related_codecs.md): building blocks of related codecs. The
    # defaults build FlexiCodec itself, and `to_dict` leaves default values out, so the
    # config files and fingerprints of FlexiCodec models do not change.
    semantic_quantizer: str = "fsq"  # "fsq" | "bsq" (FocalCodec)
    bsq_bits: int = 13
    compressor: str = "convnext"  # "convnext" | "focal" (FocalCodec)
    focal_blocks: int = 2
    focal_level: int = 2
    focal_window: int = 3
    focal_factor: int = 2
    acoustic_quantizer: str = "rvq"  # "rvq" | "semantic_rvq" (STACodec, with SPD)
    spd: dict = field(default_factory=dict)  # SemanticPredictor options
    aggregator: str = "similarity"  # "similarity" | "fixed_window" (ALMTokenizer)
    windows: list[int] = field(default_factory=lambda: [2, 3, 4])  # drawn per training batch
    window: int = 3  # inference
    # Keys accepted for compatibility with the official constructor, unused here.
    unused: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.semantic_model_type != "sensevoice":
            raise CheckpointError(
                f"config: semantic_model_type must be 'sensevoice' (the only semantic model "
                f"FlexiCodec releases use), got {self.semantic_model_type!r}"
            )
        # The official constructor forces ssl_dim to SenseVoice's width.
        self.ssl_dim = 512
        if self.latent_dim is None:
            self.latent_dim = self.encoder_dim * 2 ** len(self.encoder_rates)
        if self.max_tokens_per_group is not None and self.max_tokens_per_group <= 0:
            self.max_tokens_per_group = None
        if (
            self.sensevoice_sim_layer_idx is not None
            or self.sensevoice_semantic_layer_idx is not None
        ):
            raise CheckpointError(
                "config: sensevoice_sim_layer_idx / sensevoice_semantic_layer_idx must be null "
                "(layer averaging is not used by any released FlexiCodec), got "
                f"{self.sensevoice_sim_layer_idx!r} / {self.sensevoice_semantic_layer_idx!r}"
            )
        for name in ("encoder_rates", "decoder_rates"):
            rates = getattr(self, name)
            if not rates or any(int(r) < 1 for r in rates):
                raise CheckpointError(
                    f"config: {name} must be a list of positive ints, got {rates!r}"
                )
            setattr(self, name, [int(r) for r in rates])
        check_related_options(self)

    @property
    def hop_length(self) -> int:
        """Audio samples per 12.5 Hz frame (1280 for the released model)."""
        return math.prod(self.encoder_rates)

    @property
    def fsq_levels(self) -> list[int]:
        levels = (self.fsq_config or {}).get("levels", [8, 8, 8, 8, 8])
        return [int(v) for v in levels]

    @property
    def agg_context(self) -> int:
        """Context of the acoustic aggregator (the semantic one uses transformer_context_frames)."""
        if self.agg_transformer_context_frames is None:
            return self.transformer_context_frames
        return self.agg_transformer_context_frames

    @classmethod
    def from_dict(cls, d: dict) -> FlexiCodecConfig:
        if not isinstance(d, dict):
            raise CheckpointError(
                f"config: expected a mapping of model options, got {type(d).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"unused"}
        unknown = sorted(set(d) - known - _ACCEPTED_AND_UNUSED)
        if unknown:
            raise CheckpointError(
                f"config: unknown key(s) {unknown}; the official FlexiCodec constructor does not "
                "accept them either"
            )
        fsq = d.get("fsq_config")
        if fsq is not None:
            extra = sorted(set(fsq) - {"levels", "num_codebooks"})
            if extra or int(fsq.get("num_codebooks", 1)) != 1:
                raise CheckpointError(
                    f"config: fsq_config supports 'levels' and num_codebooks=1, got {fsq!r}"
                )
        kwargs = {k: v for k, v in d.items() if k in known}
        unused = {k: v for k, v in d.items() if k in _ACCEPTED_AND_UNUSED}
        return cls(**kwargs, unused=unused)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FlexiCodecConfig:
        """Read an official-layout config file (top-level `model:` mapping)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"config_path: no such file: {str(path)!r}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(f"config_path: {str(path)!r} is not valid YAML: {e}") from e
        if isinstance(data, dict) and "model" in data:
            data = data["model"]
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The config as a plain mapping; related-codec options at their defaults are left
        out (a FlexiCodec model's dict is what it was before they existed)."""
        d = dataclasses.asdict(self)
        d.pop("unused")
        defaults = {f.name: _default(f) for f in dataclasses.fields(self)}
        for name in RELATED_OPTIONS:
            if d[name] == defaults[name]:
                del d[name]
        return d

    @property
    def is_flexicodec(self) -> bool:
        """True when no related-codec option is switched on."""
        return (
            self.semantic_quantizer == "fsq"
            and self.compressor == "convnext"
            and self.acoustic_quantizer == "rvq"
            and self.aggregator == "similarity"
        )


RELATED_OPTIONS = (
    "semantic_quantizer",
    "bsq_bits",
    "compressor",
    "focal_blocks",
    "focal_level",
    "focal_window",
    "focal_factor",
    "acoustic_quantizer",
    "spd",
    "aggregator",
    "windows",
    "window",
)
SPD_OPTIONS = (
    "dim",
    "num_heads",
    "num_layers",
    "dim_feedforward",
    "time_masks",
    "max_time_width",
    "channel_masks",
    "max_channel_width",
)
CHOICES = {
    "semantic_quantizer": ("fsq", "bsq"),
    "compressor": ("convnext", "focal"),
    "acoustic_quantizer": ("rvq", "semantic_rvq"),
    "aggregator": ("similarity", "fixed_window"),
}


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_related_options(cfg: FlexiCodecConfig) -> None:
    """Raise CheckpointError naming the key for an invalid related-codec option."""

    def fail(key, expected, got):
        raise CheckpointError(f"config: {key} must be {expected}, got {got!r}")

    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            fail(key, " or ".join(repr(c) for c in choices), getattr(cfg, key))
    if not _is_int(cfg.bsq_bits) or not 1 <= cfg.bsq_bits <= 31:
        fail("bsq_bits", "an int in [1, 31] (int32 codes)", cfg.bsq_bits)
    if not _is_int(cfg.focal_blocks) or cfg.focal_blocks < 0:
        fail("focal_blocks", "an int >= 0", cfg.focal_blocks)
    if not _is_int(cfg.focal_level) or cfg.focal_level < 1:
        fail("focal_level", "an int >= 1", cfg.focal_level)
    if not _is_int(cfg.focal_window) or cfg.focal_window < 1 or cfg.focal_window % 2 == 0:
        fail("focal_window", "an odd int >= 1 (centred depth-wise kernels)", cfg.focal_window)
    if not _is_int(cfg.focal_factor) or cfg.focal_factor < 0 or cfg.focal_factor % 2:
        fail("focal_factor", "an even int >= 0 (kernels stay odd)", cfg.focal_factor)
    if not isinstance(cfg.spd, dict) or sorted(set(cfg.spd) - set(SPD_OPTIONS)):
        fail("spd", f"a mapping with keys among {list(SPD_OPTIONS)}", cfg.spd)
    if not all(_is_int(v) and v >= 0 for v in cfg.spd.values()):
        fail("spd", "a mapping of non-negative ints", cfg.spd)
    windows = cfg.windows
    valid = isinstance(windows, list) and all(_is_int(w) and w >= 1 for w in windows)
    if not valid or not windows:
        fail("windows", "a non-empty list of ints >= 1 (frames per token in training)", windows)
    if not _is_int(cfg.window) or cfg.window < 1:
        fail("window", "an int >= 1 (frames per token at inference)", cfg.window)


@dataclass
class SenseVoiceConfig:
    """The part of SenseVoiceSmall's `encoder_conf` that FlexiCodec uses (spec §2.3)."""

    input_size: int = 560
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    kernel_size: int = 11
    sanm_shfit: int = 0
    num_embeddings: int = 16

    @classmethod
    def from_yaml(cls, path: str | Path) -> SenseVoiceConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"sensevoice config: cannot read {str(path)!r}: {e}") from e
        conf = (data or {}).get("encoder_conf", {})
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in conf.items() if k in names}
        if "input_size" in data:
            kwargs["input_size"] = data["input_size"]
        return cls(**kwargs)
