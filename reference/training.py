"""The training forward of FlexiCodec (spec §11.1) and its generator-side losses.

`FlexiCodec.encode` is inference-oriented (it validates inputs and returns codes); training
needs the continuous path with straight-through quantisers, so this module runs the model's
sub-modules directly:

    audio [B, N] -> front-end (dither) -> SenseVoice (frozen, no grad) -> 12.5 Hz  sem [B, 512, T]
                 -> DAC encoder                                                  ac  [B, D, T]
    merge (threshold drawn once per batch) -> aggregators -> sem_tok, ac_tok [B, *, G]
    sem_tok -> ConvNeXt -> FSQ (straight-through) -> ConvNeXt -> sem_dec [B, D, G]
    ac_tok - sem_dec -> RVQ (train mode: per-item quantizer dropout) -> z_q      (or bypass)
    z_q + sem_dec -> repeat by token lengths -> bottleneck transformer -> DAC decoder -> audio

Everything is differentiable except the frozen SenseVoice and the discrete decisions
(boundaries, codes). Batches hold equal-length crops (the data pipeline guarantees it), so no
per-item masks are needed; this is the official training behaviour.

Randomness, in the order the official code draws it: the merging threshold
(`random.uniform(lower, upper)`, Python `random`, once per batch), the front-end dither and
the RVQ dropout (global torch CPU generator), the bypass decision (`random.random() < rate`).

Related-codec options (`reference.variants`) add their terms to `losses` (0 when off):
`entropy` (BSQ's entropy loss of the semantic quantizer input), `spd` (SPD's cross-entropy
against the k-means tokens that stage 0 is assigned in training; the trainer applies the
two-stage weight), `mae` and `ar` (fixed windows, with the heads of `attach_training_heads`:
MAE masks 20-30 % of the acoustic encoder's input frames; AR predicts RVQ stage 2's output
from stages 0 and 1). With `aggregator: fixed_window` the window is drawn per batch from the
config's `windows` (global torch generator, before the dither) in place of the threshold,
in either phase, and the window-query decoder replaces repeat-by-length.

Two-phase recipe (spec §11.5): a model whose config has `use_similarity_alignment: false`
trains at the fixed 12.5 Hz rate ("phase 1"): every frame is its own group, no aggregators,
no bottleneck transformer, and the distillation target is the 12.5 Hz SenseVoice feature
itself, as in the official non-aggregated branch. With `use_similarity_alignment: true`
("phase 2") frames are merged with a dynamic threshold.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, describe
from .frontend import MIN_SAMPLES
from .losses import MelLossSettings, MultiScaleMelLoss
from .merging import Segmentation, expand_groups
from .variants import semantic_token_features, semantic_tokens, window_query

REPA_HIDDEN_FACTOR = 3


@dataclass
class TrainingForwardConfig:
    """Options of the training forward.

    threshold_lower / threshold_upper: bounds of the per-batch threshold when the model uses
        a dynamic threshold; None takes the model config's `similarity_threshold_{lower,upper}`.
    fixed_threshold: use this threshold for every batch instead (tests, ablations).
    bypass_quantize_rate: probability that a batch skips the acoustic RVQ (decoder input is
        the semantic part only, acoustic losses 0).
    dither: front-end dither (1.0 = official training; it draws from the global generator).
    mel: settings of the multi-scale mel loss.
    repa_isolated: False is the official REPA term, whose gradient also reaches the DAC
        encoder output twice: through its target `sem + ac` and, through the
        straight-through estimator, through the quantised latent that the bottleneck reads.
        The quantiser erases the scale of its input (codes by cosine distance, raw codebook
        rows out), so nothing the bottleneck sees can follow that scale, and the second
        path pushes it up (docs/phase2_divergence.md). True trains the same value only into
        the bottleneck transformer, its head and the semantic branch: the target and the
        quantised acoustic latent are detached, and the bottleneck runs once more on the
        detached latent for the head (no extra pass on bypassed batches).
    """

    threshold_lower: float | None = None
    threshold_upper: float | None = None
    fixed_threshold: float | None = None
    bypass_quantize_rate: float = 0.125
    dither: float = 1.0
    mel: MelLossSettings = field(default_factory=MelLossSettings)
    repa_isolated: bool = False


@dataclass
class TrainingOutputs:
    """Result of one training forward.

    audio:  `[B, 1, L]` reconstruction, trimmed to `L = min(decoded length, N)`
    target: `[B, 1, L]` the input audio trimmed the same way
    losses: scalars `mel`, `commitment`, `codebook`, `distill` (already times
            `lambda_distill_loss`) and `repa` (0 without a REPA head), `entropy`, `spd`,
            `mae`, `ar` (0 when their option or head is off); unweighted otherwise
    threshold: the merging threshold used (None at the fixed frame rate and with fixed
            windows)
    window: the fixed window of this batch (None unless `aggregator: fixed_window`)
    bypassed: whether the acoustic RVQ was skipped
    num_groups: `[B]` tokens per item; frames: 12.5 Hz frames per item
    acoustic_latent: `[B, D, T]` the DAC encoder's output, in the graph (the trainer's
            gradient probe differentiates single loss terms with respect to it)
    scales: detached scalars that show a latent drifting: `encoder_rms` (RMS of the DAC
            encoder output), `rvq_input_rms` (of the RVQ input `ac_tok - sem_dec`,
            `[B, D, G]`), `rvq_latent_rms` (of every stage's projected latent `z_e`,
            `[B, sum d_k, G]`, which the commitment loss compares with raw codebook rows;
            NaN when the RVQ was bypassed)
    """

    audio: torch.Tensor
    target: torch.Tensor
    losses: dict[str, torch.Tensor]
    threshold: float | None
    bypassed: bool
    num_groups: torch.Tensor
    frames: int
    window: int | None = None
    acoustic_latent: torch.Tensor | None = None
    scales: dict[str, torch.Tensor] = field(default_factory=dict)


def attach_repa_head(model: nn.Module) -> nn.Module:
    """Give `model` the training repository's REPA head `repa_mlp` (keys
    `repa_mlp.{0,2}.{weight,bias}`: Linear(D, 3D), GELU, Linear(3D, D) with D the latent
    width) if it has a bottleneck transformer and no head yet. Inference ignores the head;
    official checkpoints may carry it. Returns the model."""
    if getattr(model, "bottleneck_transformer", None) is None or hasattr(model, "repa_mlp"):
        return model
    dim = model.config.latent_dim
    model.repa_mlp = nn.Sequential(
        nn.Linear(dim, REPA_HIDDEN_FACTOR * dim),
        nn.GELU(),
        nn.Linear(REPA_HIDDEN_FACTOR * dim, dim),
    ).to(next(model.parameters()).device)
    return model


def attach_training_heads(model: nn.Module, mae: bool, ar: bool) -> nn.Module:
    """Give a fixed-window `model` the training-only heads of ALMTokenizer's auxiliary
    losses: `mae_head` (`MAEHead`, when `mae`) and `ar_predictor` (`ContinuousARPredictor`,
    when `ar`; needs 3 RVQ stages), one transformer layer at the aggregator's sizes. Like
    the REPA head, inference ignores them and `prepare_model` skips their keys. Returns the
    model."""
    mc = model.config
    if mc.aggregator != "fixed_window":
        return model
    wq = window_query()
    sizes = (
        mc.latent_dim,
        mc.agg_transformer_dim,
        mc.agg_transformer_num_heads,
        1,
        mc.agg_transformer_dim_feedforward,
    )
    device = next(model.parameters()).device
    if mae and not hasattr(model, "mae_head"):
        model.mae_head = wq.MAEHead(*sizes).to(device)
    if ar and not hasattr(model, "ar_predictor"):
        if mc.n_codebooks < 3:
            raise InputError(
                f"the AR loss predicts RVQ stage 2 from stages 0 and 1: it needs n_codebooks "
                f">= 3, got {mc.n_codebooks}"
            )
        model.ar_predictor = wq.ContinuousARPredictor(*sizes).to(device)
    return model


_MEL_LOSSES: dict[tuple[MelLossSettings, str], MultiScaleMelLoss] = {}


def mel_loss_module(settings: MelLossSettings, device: torch.device) -> MultiScaleMelLoss:
    """The (cached) mel loss for `settings` with its filters on `device`."""
    key = (settings, str(device))
    if key not in _MEL_LOSSES:
        _MEL_LOSSES[key] = MultiScaleMelLoss(settings).to(device)
    return _MEL_LOSSES[key]


def draw_threshold(model: nn.Module, cfg: TrainingForwardConfig) -> float:
    """The merging threshold of this batch: fixed, drawn from `[lower, upper]`, or the
    model's fixed `similarity_threshold`, in that order of precedence."""
    if cfg.fixed_threshold is not None:
        return float(cfg.fixed_threshold)
    mc = model.config
    if mc.use_dynamic_similarity_threshold:
        lower = (
            mc.similarity_threshold_lower if cfg.threshold_lower is None else cfg.threshold_lower
        )
        upper = (
            mc.similarity_threshold_upper if cfg.threshold_upper is None else cfg.threshold_upper
        )
        return random.uniform(lower, upper)
    if mc.similarity_threshold is None:
        raise InputError(
            "model config: similarity_threshold must be set when "
            "use_dynamic_similarity_threshold is false, got None"
        )
    return float(mc.similarity_threshold)


def one_group_per_frame(batch: int, frames: int, device) -> Segmentation:
    """The fixed-rate segmentation: frame t is group t, for every item."""
    ids = torch.arange(frames, device=device).expand(batch, -1)
    full = torch.full((batch,), frames, dtype=torch.long, device=device)
    return Segmentation(
        similarity=torch.zeros(batch, max(frames - 1, 0), device=device),
        group_ids=ids,
        token_lengths=torch.ones(batch, frames, dtype=torch.long, device=device),
        num_groups=full,
        frame_lengths=full,
    )


def _check_audio(audio) -> None:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or not audio.is_floating_point():
        raise InputError(f"audio: expected a float tensor [B, N], got {describe(audio)}")
    if audio.shape[0] == 0 or audio.shape[1] < MIN_SAMPLES:
        raise InputError(
            f"audio: expected B >= 1 items of at least {MIN_SAMPLES} samples, got {describe(audio)}"
        )


def training_step_outputs(
    model: nn.Module, audio: torch.Tensor, cfg: TrainingForwardConfig | None = None
) -> TrainingOutputs:
    """One training forward of `model` (a reference `FlexiCodec`, in train mode for quantizer
    dropout) on equal-length 16 kHz crops `audio` `[B, N]`.

    Returns the reconstruction and every generator-side loss except the adversarial and
    feature-matching terms, which need the discriminator (see `reference.losses`).
    """
    cfg = cfg or TrainingForwardConfig()
    _check_audio(audio)
    audio = audio.float()
    batch, num_samples = audio.shape
    mc = model.config
    windowed = mc.aggregator == "fixed_window"
    dynamic = bool(mc.use_similarity_alignment) and not windowed
    threshold = draw_threshold(model, cfg) if dynamic else None
    window = window_query().sample_window(mc.windows) if windowed else None

    with torch.autocast(audio.device.type, enabled=False):
        features, feature_lens = model.frontend(audio, None, cfg.dither)
        with torch.no_grad():
            sem, _ = model.semantic(features, feature_lens)
    # fp32 even under autocast: the aggregators write fp32 queries into a sequence of this
    # dtype.
    ac = model.dac.encode_audio(audio.unsqueeze(1)).float()
    frames = min(sem.shape[-1], ac.shape[-1])
    sem, ac = sem[..., :frames], ac[..., :frames]
    lengths = torch.full((batch,), frames, dtype=torch.long, device=audio.device)
    zero = audio.new_zeros(())

    mae = zero
    if windowed:
        seg = model.window_segmentation(sem, lengths, window)
        sem_tokens, _ = model.semantic_aggregator(sem, window, lengths)
        head = getattr(model, "mae_head", None)
        mask = window_query().mae_mask(lengths, frames) if head is not None else None
        ac_tokens, ac_frames = model.acoustic_aggregator(ac, window, lengths, mask)
        if head is not None:
            # The target is detached: the encoder must not shrink its own output to win.
            mae = window_query().mae_loss(head(ac_frames, lengths), ac.detach(), mask)
        distill_target = sem_tokens.detach()
    elif dynamic:
        seg = model.merge(sem, lengths, threshold)
        sem_tokens, ac_tokens = model.aggregate(sem, ac, seg)
        # The training repository's target is the semantic aggregator applied (again) to the
        # same features under stop-gradient; the aggregator is deterministic, so that is the
        # value of `sem_tokens`.
        distill_target = sem_tokens.detach()
    else:
        seg = one_group_per_frame(batch, frames, audio.device)
        sem_tokens, ac_tokens = sem, ac
        distill_target = sem

    hidden = model.compress(sem_tokens, seg.num_groups)
    quantized_sem, _ = model.semantic_vq(hidden)
    sem_decoded = model.decompress(quantized_sem, seg.num_groups)
    distill = mc.lambda_distill_loss * F.mse_loss(sem_decoded, distill_target)
    entropy = zero
    if mc.semantic_quantizer == "bsq":
        entropy = model.semantic_vq.entropy_loss(hidden, seg.num_groups)

    rvq_args, spd = (), zero
    if mc.acoustic_quantizer == "semantic_rvq":
        tokens = semantic_tokens(semantic_token_features(sem, seg), model.semantic_vocab)
        rvq_args = (tokens,)
        spd = model.spd.loss(ac_tokens, tokens, seg.num_groups)

    bypassed = random.random() < cfg.bypass_quantize_rate
    ar = zero
    rvq_input = ac_tokens - sem_decoded
    if bypassed:
        latent, commitment, codebook = sem_decoded, zero, zero
        stage_latents = audio.new_full((), float("nan"))
    else:
        predictor = getattr(model, "ar_predictor", None)
        stages = [] if predictor is not None else None
        quantized, _, stage_latents, commitment, codebook = model.dac.quantizer(
            rvq_input, *rvq_args, stage_outputs=stages
        )
        latent = quantized + sem_decoded
        if predictor is not None:
            ar = predictor.loss(stages[:3], seg.num_groups)

    def frame_rate(tokens: torch.Tensor) -> torch.Tensor:
        if windowed:
            return model.window_decoder(tokens, frames, window, lengths)
        if dynamic:
            return expand_groups(tokens.transpose(1, 2), seg.token_lengths, frames).transpose(1, 2)
        return tokens

    z = frame_rate(latent)
    repa = zero
    if (dynamic or windowed) and model.bottleneck_transformer is not None:
        z = model.bottleneck_transformer(z)
        head = getattr(model, "repa_mlp", None)
        if head is not None:
            repa_target = sem if bypassed else sem + ac
            repa_input = z
            if cfg.repa_isolated and not bypassed:
                repa_target = repa_target.detach()
                repa_input = model.bottleneck_transformer(
                    frame_rate(quantized.detach() + sem_decoded)
                )
            repa = F.mse_loss(head(repa_input.transpose(1, 2)).transpose(1, 2), repa_target)
    decoded = model.dac.decoder(z)

    length = min(decoded.shape[-1], num_samples)
    fake = decoded[..., :length]
    real = audio[:, None, :length]
    with torch.autocast(audio.device.type, enabled=False):
        mel = mel_loss_module(cfg.mel, audio.device)(fake.float(), real)
    return TrainingOutputs(
        audio=fake,
        target=real,
        losses={
            "mel": mel,
            "commitment": commitment,
            "codebook": codebook,
            "distill": distill,
            "repa": repa,
            "entropy": entropy,
            "spd": spd,
            "mae": mae,
            "ar": ar,
        },
        threshold=threshold,
        bypassed=bypassed,
        num_groups=seg.num_groups,
        frames=frames,
        window=window,
        acoustic_latent=ac,
        scales={
            "encoder_rms": _rms(ac),
            "rvq_input_rms": _rms(rvq_input),
            "rvq_latent_rms": _rms(stage_latents),
        },
    )


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().pow(2).mean().sqrt()


class TrainingForward(nn.Module):
    """`training_step_outputs` as a module (what DistributedDataParallel wraps): holds the
    codec as `codec`, so `self.codec.state_dict()` keeps the official key layout."""

    def __init__(self, codec: nn.Module, cfg: TrainingForwardConfig):
        super().__init__()
        self.codec = codec
        self.cfg = cfg

    def forward(self, audio: torch.Tensor) -> TrainingOutputs:
        return training_step_outputs(self.codec, audio, self.cfg)
