"""One YAML file configures a training run: the model, the frozen SenseVoice, and training.

Layout (every key optional except where noted; unknown keys are errors):

    model:        the official model config keys (as in the official `config.yaml`)
    sensevoice:   SenseVoice architecture (`SenseVoiceConfig` fields; released = defaults)
    training:     seed, phase, steps, checkpoints, thresholds, data, optimizer, loss weights,
                  mel loss, discriminator, init_from, ... (the dataclasses below)

`load_train_config("tiny")` reads a configuration shipped with the package,
`load_train_config("path/to/run.yaml")` a file. Defaults are the recipe's (spec §11).

A top-level `base: NAME_OR_PATH` (a shipped name, or a file path relative to the including
file) reads that config first and lays this file's mappings over it, key by key (lists and
values replace). The shipped `tiny_bsq`, `tiny_focal`, `tiny_semantic_rvq` and
`tiny_fixed_window` are `tiny` with one related-codec option switched on
(docs/related_codecs.md).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..reference.config import FlexiCodecConfig, SenseVoiceConfig
from ..reference.errors import CheckpointError
from ..reference.frontend import MIN_SAMPLES
from ..reference.losses import MelLossSettings
from ..reference.training import TrainingForwardConfig

SHIPPED = (
    "tiny",
    "released",
    "tiny_bsq",
    "tiny_focal",
    "tiny_semantic_rvq",
    "tiny_fixed_window",
)


@dataclass
class DataConfig:
    """batch_size: crops per process and step; crop_samples: crop length at 16 kHz (files
    shorter than it are cropped to the shortest file of their batch; crops are rounded down to
    whole codec frames); min_samples: shorter files are skipped; silence_peak: files whose
    peak |sample| is below it are skipped; num_workers: DataLoader worker processes."""

    batch_size: int = 8
    crop_samples: int = 96000
    min_samples: int = 16000
    silence_peak: float = 1e-4
    num_workers: int = 2


@dataclass
class OptimizerConfig:
    """AdamW for generator and discriminator; generator lr: linear warm-up over
    `warmup_steps`, then cosine from `lr` to `min_lr` at `decay_steps` (constant after).
    The discriminator keeps `lr` unless `schedule_discriminator` (spec §11.4 [UNSURE])."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 5000
    decay_steps: int = 1_000_000
    min_lr: float = 5e-5
    grad_clip: float = 1.0
    schedule_discriminator: bool = False


@dataclass
class LossWeights:
    """Generator loss weights (spec §11.2); `distill` multiplies the distillation loss that
    already includes the model's `lambda_distill_loss` (15). The related-codec terms act
    only when their model option is on: `entropy` (BSQ, `semantic_quantizer: bsq`), `spd`
    (lambda of STACodec's SPD loss, from `spd_joint_from_step` on; `acoustic_quantizer:
    semantic_rvq`), `mae` and `ar` (ALMTokenizer's auxiliary losses, `aggregator:
    fixed_window`; a weight of 0 leaves the head out)."""

    commitment: float = 0.25
    codebook: float = 1.0
    adversarial: float = 1.0
    feature_matching: float = 2.0
    mel: float = 15.0
    distill: float = 1.0
    repa: float = 1.0
    entropy: float = 0.1
    spd: float = 1.0
    mae: float = 1.0
    ar: float = 1.0


@dataclass
class SemanticVocabConfig:
    """The k-means vocabulary of `acoustic_quantizer: semantic_rvq` (stage 0's codes), set
    once at the start of a fresh run (resumed runs and fine-tuned checkpoints carry it):
    `file`: a safetensors file whose `centroids` tensor `[codebook_size, 512]` is used as is;
    otherwise `fit_kmeans` (`kmeans_iters` iterations, seeded by `training.seed`) on the
    12.5 Hz SenseVoice features (no dither) of the first `fit_batches` batches of epoch 0."""

    file: str | None = None
    fit_batches: int = 8
    kmeans_iters: int = 50


@dataclass
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    fft_sizes: tuple[int, ...] = (2048, 1024, 512)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    mrd_channels: int = 64


@dataclass
class InitFrom:
    """Initial weights. strict: the model is exactly the checkpoint's (loaded by
    `prepare_model`, `model:` may be left out); not strict: the `model:` config is built and
    every checkpoint tensor with a matching name and shape is loaded (phase 1 -> phase 2,
    new modules keep their initialisation)."""

    checkpoint: str
    config: str | None = None
    sensevoice: str | None = None
    strict: bool = True


@dataclass
class TrainingConfig:
    """seed: initialisation and randomness (process r uses seed + r at run time);
    phase: 1 (fixed 12.5 Hz: sets the model's use_similarity_alignment false), 2 (dynamic
    frame rate: true) or None (the model config decides); max_steps: default total steps;
    checkpoint_every / keep_checkpoints (0 = keep all) / log_every (progress-bar refresh);
    bf16: autocast the model and discriminators in bfloat16 (losses stay fp32);
    discriminator_start: GAN warm-up: before this step the discriminator neither trains nor
    scores, and the generator learns from the reconstruction, quantizer, distillation and
    REPA losses alone (about half the step time on CPU; the adversarial terms log as 0);
    adversarial_start: the generator's adversarial and feature-matching terms start at this
    step (None = discriminator_start); between the two the discriminator trains alone, so a
    fresh discriminator has learnt something before it steers an already trained generator
    (fine-tuning a GAN-free model with the GAN terms on);
    fixed_threshold / threshold_lower / threshold_upper / bypass_quantize_rate / dither: the
    training forward (see `TrainingForwardConfig`); repa: train the REPA head;
    repa_isolated: the REPA term trains only the bottleneck transformer, its head and the
    semantic branch, not the acoustic encoder, aggregator and RVQ (false = the official
    term, whose straight-through gradient made phase 2 diverge with the GAN terms on:
    docs/phase2_divergence.md; `TrainingForwardConfig.repa_isolated`);
    sensevoice_path: SenseVoiceSmall folder whose model.pt gives the frozen SenseVoice
    weights (else they stay random: fine for tests, not for real training);
    save_sensevoice: write the frozen SenseVoice into every checkpoint (makes it loadable
    with `prepare_model` alone); spd_joint_from_step: STACodec's two-stage schedule, the SPD
    loss weighs 0 before this step and `loss_weights.spd` from it on; semantic_vocab: how the
    `semantic_rvq` vocabulary is made (`SemanticVocabConfig`); probe_every: every this many
    steps (0 = never) the log's `probe_<term>` columns get the gradient norm of each weighted
    loss term with respect to the DAC encoder output (one extra backward pass per term)."""

    seed: int = 0
    phase: int | None = None
    max_steps: int = 1_000_000
    checkpoint_every: int = 30000
    keep_checkpoints: int = 0
    log_every: int = 10
    bf16: bool = False
    discriminator_start: int = 0
    adversarial_start: int | None = None
    fixed_threshold: float | None = None
    threshold_lower: float | None = None
    threshold_upper: float | None = None
    bypass_quantize_rate: float = 0.125
    dither: float = 1.0
    repa: bool = True
    repa_isolated: bool = False
    sensevoice_path: str | None = None
    save_sensevoice: bool = True
    spd_joint_from_step: int = 0
    probe_every: int = 0
    semantic_vocab: SemanticVocabConfig = field(default_factory=SemanticVocabConfig)
    init_from: InitFrom | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    mel_loss: MelLossSettings = field(default_factory=MelLossSettings)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class TrainConfig:
    """A whole run: `model` (None when strict `init_from` supplies it), `sensevoice`,
    `training`, and `source` (the YAML mapping as read, written into the run folder)."""

    model: FlexiCodecConfig | None
    sensevoice: SenseVoiceConfig
    training: TrainingConfig
    source: dict

    def forward_config(self) -> TrainingForwardConfig:
        t = self.training
        return TrainingForwardConfig(
            threshold_lower=t.threshold_lower,
            threshold_upper=t.threshold_upper,
            fixed_threshold=t.fixed_threshold,
            bypass_quantize_rate=t.bypass_quantize_rate,
            dither=t.dither,
            mel=t.mel_loss,
            repa_isolated=t.repa_isolated,
        )


def _convert(value, annotation, where: str):
    """Coerce a YAML value to a field's annotated type (ints for floats, lists to tuples,
    nested dataclasses), or raise naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if dataclasses.is_dataclass(annotation):
        return _dataclass_from(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise CheckpointError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(
            _convert(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if annotation is bool:
        if not isinstance(value, bool):
            raise CheckpointError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise CheckpointError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _dataclass_from(cls, data, where: str):
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise CheckpointError(f"{where}: {e}") from e


def _check(t: TrainingConfig, model: FlexiCodecConfig | None) -> None:
    def fail(key, expected, got):
        raise CheckpointError(f"training.{key}: expected {expected}, got {got!r}")

    if t.phase not in (None, 1, 2):
        fail("phase", "1 (fixed 12.5 Hz), 2 (dynamic frame rate) or null", t.phase)
    if t.max_steps < 1:
        fail("max_steps", "an integer >= 1", t.max_steps)
    if t.checkpoint_every < 1:
        fail("checkpoint_every", "an integer >= 1", t.checkpoint_every)
    if t.keep_checkpoints < 0:
        fail("keep_checkpoints", "an integer >= 0 (0 = keep all)", t.keep_checkpoints)
    if t.log_every < 1:
        fail("log_every", "an integer >= 1", t.log_every)
    if t.discriminator_start < 0:
        fail("discriminator_start", "an integer >= 0", t.discriminator_start)
    if t.adversarial_start is not None and t.adversarial_start < t.discriminator_start:
        fail(
            "adversarial_start",
            f"null or an integer >= discriminator_start ({t.discriminator_start})",
            t.adversarial_start,
        )
    if t.probe_every < 0:
        fail("probe_every", "an integer >= 0 (0 = never)", t.probe_every)
    if t.spd_joint_from_step < 0:
        fail("spd_joint_from_step", "an integer >= 0", t.spd_joint_from_step)
    if t.semantic_vocab.fit_batches < 1:
        fail("semantic_vocab.fit_batches", "an integer >= 1", t.semantic_vocab.fit_batches)
    if t.semantic_vocab.kmeans_iters < 1:
        fail("semantic_vocab.kmeans_iters", "an integer >= 1", t.semantic_vocab.kmeans_iters)
    for name in ("entropy", "spd", "mae", "ar"):
        if getattr(t.loss_weights, name) < 0:
            fail(f"loss_weights.{name}", "a number >= 0", getattr(t.loss_weights, name))
    if (
        model is not None
        and model.aggregator == "fixed_window"
        and t.loss_weights.ar > 0
        and model.n_codebooks < 3
    ):
        fail(
            "loss_weights.ar",
            f"0 with n_codebooks = {model.n_codebooks} (the AR loss predicts RVQ stage 2 "
            "from stages 0 and 1)",
            t.loss_weights.ar,
        )
    if not 0.0 <= t.bypass_quantize_rate <= 1.0:
        fail("bypass_quantize_rate", "a probability in [0, 1]", t.bypass_quantize_rate)
    if t.dither < 0:
        fail("dither", "a number >= 0", t.dither)
    d = t.data
    if d.batch_size < 1:
        fail("data.batch_size", "an integer >= 1", d.batch_size)
    if d.num_workers < 0:
        fail("data.num_workers", "an integer >= 0", d.num_workers)
    hop = model.hop_length if model is not None else 1280
    windows = max(max(t.mel_loss.window_lengths), max(t.discriminator.fft_sizes, default=0))
    least = max(MIN_SAMPLES, hop, 2 * windows)
    if d.min_samples < least:
        fail(
            "data.min_samples",
            f"at least {least} (85 ms front-end minimum, one codec frame of {hop} samples, "
            "twice the longest STFT window)",
            d.min_samples,
        )
    if d.crop_samples < d.min_samples:
        fail("data.crop_samples", f">= data.min_samples ({d.min_samples})", d.crop_samples)
    o = t.optimizer
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        fail("optimizer.min_lr", f"0 <= min_lr <= lr = {o.lr}", o.min_lr)
    if o.warmup_steps < 0 or o.decay_steps < o.warmup_steps:
        fail("optimizer.decay_steps", f">= warmup_steps ({o.warmup_steps})", o.decay_steps)
    if o.grad_clip <= 0:
        fail("optimizer.grad_clip", "a number > 0", o.grad_clip)
    if not t.discriminator.periods and not t.discriminator.fft_sizes:
        fail("discriminator", "at least one period or FFT size", t.discriminator)
    if model is not None:
        check_trainable(model)
    if model is None and (t.init_from is None or not t.init_from.strict):
        raise CheckpointError(
            "config: a `model:` section is required unless training.init_from gives a "
            "checkpoint with strict: true"
        )


def check_trainable(model: FlexiCodecConfig) -> None:
    """Training compares the decoded semantic latent with SenseVoice features (distillation,
    REPA), so the latent width must be SenseVoice's."""
    if model.latent_dim != model.ssl_dim:
        raise CheckpointError(
            f"model.latent_dim: training needs it equal to the SenseVoice width {model.ssl_dim} "
            f"(distillation compares the two), got {model.latent_dim}"
        )


def parse_train_config(data: dict) -> TrainConfig:
    """Build a `TrainConfig` from a YAML mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"config: expected a mapping at the top level, got {data!r}")
    unknown = sorted(set(data) - {"model", "sensevoice", "training"})
    if unknown:
        raise CheckpointError(
            f"config: unknown top-level key(s) {unknown}; expected model, sensevoice, training"
        )
    training = _dataclass_from(TrainingConfig, data.get("training") or {}, "training")
    model = None
    if data.get("model") is not None:
        model_dict = dict(data["model"])
        if training.phase is not None:
            model_dict["use_similarity_alignment"] = training.phase == 2
        model = FlexiCodecConfig.from_dict(model_dict)
    sensevoice = _dataclass_from(SenseVoiceConfig, data.get("sensevoice") or {}, "sensevoice")
    _check(training, model)
    return TrainConfig(model, sensevoice, training, data)


def _read_yaml(name_or_path, relative_to: Path | None = None) -> tuple[dict, Path | None, str]:
    """(mapping, folder of the file or None for a shipped config, identity: the resolved path
    or the shipped name) of a config name/path."""
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if path.is_file():
        text, folder, identity = path.read_text(), path.parent, str(path.resolve())
    elif str(name_or_path) in SHIPPED:
        text = (resources.files(__package__) / "configs" / f"{name_or_path}.yaml").read_text()
        folder, identity = None, str(name_or_path)
    else:
        raise CheckpointError(
            f"--config: expected a YAML file or one of the shipped configs {list(SHIPPED)}, "
            f"got {str(name_or_path)!r}"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CheckpointError(f"--config: {str(name_or_path)!r} is not valid YAML: {e}") from e
    if data is not None and not isinstance(data, dict):
        raise CheckpointError(f"config: expected a mapping at the top level, got {data!r}")
    return data or {}, folder, identity


def _overlay(base: dict, over: dict) -> dict:
    """`over` laid on `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """Read a training YAML: a file path, or the name of a shipped config (`SHIPPED`),
    following `base:` (module docstring)."""
    data, folder, identity = _read_yaml(name_or_path)
    chain = [identity]
    while "base" in data:
        data = dict(data)
        base, folder, identity = _read_yaml(data.pop("base"), folder)
        if identity in chain:
            raise CheckpointError(
                f"--config: the `base:` configs of {str(name_or_path)!r} form a cycle: "
                + " -> ".join([*chain, identity])
            )
        chain.append(identity)
        data = _overlay(base, data)
    return parse_train_config(data)
