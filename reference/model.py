"""FlexiCodec: the whole codec, encode (spec §1.1) and decode (spec §1.2).

Sub-module names reproduce the official state-dict keys (spec §12.3), so an official
checkpoint loads with `load_state_dict` after the key clean-up in `reference.checkpoint`.

Batches are exact: every stage masks per item, so an item's codes and audio equal the
official single-item (B = 1) results, which are our ground truth (spec §1.4).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from . import variants
from .aggregator import QueryTokenAggregator
from .attention import AttentionPattern
from .bsq import BSQWrapper
from .config import FlexiCodecConfig, SenseVoiceConfig
from .convnext import ConvNeXtBlock
from .dac import DAC
from .errors import InputError, describe
from .frontend import DEFAULT_CMVN_PATH, FrontEnd
from .fsq import FSQWrapper
from .merging import Segmentation, expand_groups, group_means, segment
from .resample import downsample_semantic
from .result import EncodeResult
from .sensevoice import SenseVoiceEncoder
from .transformer import ProjectedTransformer
from .weight_norm import WNConv1d

CONVNEXT_HIDDEN = 2048


def _is_int_tensor(x) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and not x.dtype.is_floating_point
        and not x.dtype.is_complex
        and x.dtype != torch.bool
    )


def mask_after(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero `x` `[B, C, L]` at positions `>= lengths[b]`."""
    valid = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1) < lengths.view(-1, 1, 1)
    return x * valid.to(x.dtype)


def resolve_num_quantizers(
    model: FlexiCodec, num_quantizers: int | None, stacklevel: int = 3
) -> int:
    """The quantizer count an encode uses: `num_quantizers`, or all the model has (1 semantic
    + `n_codebooks` acoustic) when it is None or larger. The official code silently uses all
    its codebooks when asked for more; we do the same and say so once (`stacklevel`: the
    warning's, counted from this function, so that it names the user's call)."""
    available = model.max_num_quantizers
    if num_quantizers is None:
        return available
    if (
        isinstance(num_quantizers, bool)
        or not isinstance(num_quantizers, int)
        or num_quantizers < 1
    ):
        raise InputError(
            f"num_quantizers: expected an int >= 1 (1 semantic + up to "
            f"{model.config.n_codebooks} acoustic), got {describe(num_quantizers)}"
        )
    if num_quantizers > available:
        warnings.warn(
            f"num_quantizers={num_quantizers} is more than this model has; using all "
            f"{available} (1 semantic + {model.config.n_codebooks} acoustic), as the official "
            "code does",
            stacklevel=stacklevel,
        )
        return available
    return num_quantizers


def _pattern(window: int | None, causal: bool, context: int) -> AttentionPattern:
    if causal:
        return AttentionPattern(causal=True, context=context)
    return AttentionPattern(window=window)


class FlexiCodec(nn.Module):
    """The FlexiCodec codec (reference implementation).

    `encode(audio [B, N]) -> dict` and `decode(semantic_codes, acoustic_codes,
    token_lengths) -> audio [B, 1, hop * T - 16]` (for the released rates).

    Related-codec options of the config (`reference.variants`) replace parts in place:
    `semantic_quantizer: bsq` (`semantic_vq.bsq.*`), `compressor: focal` (`compressor.*`,
    `decompressor.*` instead of `convnext_encoder/decoder.*`), `acoustic_quantizer:
    semantic_rvq` (stage 0 assigned; `semantic_vocab` `[codebook_size, 512]` and `spd.*`),
    `aggregator: fixed_window` (`semantic_aggregator`, `acoustic_aggregator` are window-query
    encoders, `window_decoder.*` replaces repeat-by-length; no merging).
    """

    def __init__(
        self,
        config: FlexiCodecConfig,
        sensevoice: SenseVoiceConfig | None = None,
        cmvn_path=DEFAULT_CMVN_PATH,
    ):
        super().__init__()
        cfg = self.config = config
        self.frontend = FrontEnd(cmvn_path)
        self.semantic_model = SenseVoiceEncoder(sensevoice)
        self.register_buffer("semantic_mean", torch.zeros(1))
        self.register_buffer("semantic_std", torch.ones(1))
        self.dac = DAC.from_config(cfg)
        latent = cfg.latent_dim
        if cfg.compressor == "focal":
            self.compressor, self.decompressor = variants.focal_pair(cfg, latent)
        else:
            self.convnext_encoder = nn.Sequential(
                WNConv1d(cfg.ssl_dim, cfg.convnext_dim, kernel_size=1),
                *[
                    ConvNeXtBlock(cfg.convnext_dim, CONVNEXT_HIDDEN, causal=cfg.is_causal)
                    for _ in range(cfg.convnext_layers)
                ],
            )
        if cfg.semantic_quantizer == "bsq":
            self.semantic_vq = BSQWrapper(cfg.convnext_dim, cfg.bsq_bits)
        else:
            self.semantic_vq = FSQWrapper(cfg.convnext_dim, cfg.fsq_levels)
        if cfg.compressor == "convnext":
            self.convnext_decoder = nn.Sequential(
                *[
                    ConvNeXtBlock(cfg.convnext_dim, CONVNEXT_HIDDEN, causal=cfg.is_causal)
                    for _ in range(cfg.convnext_layers)
                ],
                WNConv1d(cfg.convnext_dim, latent, kernel_size=1),
            )
        if cfg.aggregator == "fixed_window":
            (
                self.semantic_aggregator,
                self.acoustic_aggregator,
                self.window_decoder,
            ) = variants.window_encoders(cfg, latent)
        elif cfg.use_query_token_aggregator:
            self.semantic_aggregator = QueryTokenAggregator(
                cfg.agg_transformer_dim,
                cfg.ssl_dim,
                cfg.agg_transformer_num_heads,
                cfg.agg_transformer_num_layers,
                cfg.agg_transformer_dim_feedforward,
                # The official code gives the semantic aggregator the bottleneck's context.
                _pattern(
                    cfg.agg_transformer_window,
                    cfg.agg_transformer_causal,
                    cfg.transformer_context_frames,
                ),
                cfg.agg_use_mean_pooling_init,
            )
            self.acoustic_aggregator = QueryTokenAggregator(
                latent,
                latent,
                cfg.agg_transformer_num_heads,
                cfg.agg_transformer_num_layers,
                cfg.agg_transformer_dim_feedforward,
                _pattern(cfg.agg_transformer_window, cfg.agg_transformer_causal, cfg.agg_context),
                cfg.agg_use_mean_pooling_init,
            )
        self.bottleneck_transformer = None
        if cfg.use_bottleneck_transformer and cfg.transformer_num_layers > 0:
            self.bottleneck_transformer = ProjectedTransformer(
                latent,
                cfg.transformer_dim,
                cfg.transformer_num_heads,
                cfg.transformer_num_layers,
                cfg.transformer_dim_feedforward,
                _pattern(
                    cfg.transformer_window, cfg.transformer_causal, cfg.transformer_context_frames
                ),
            )
        if cfg.acoustic_quantizer == "semantic_rvq":
            self.dac.quantizer = variants.semantic_rvq_like(self.dac.quantizer)
            # The k-means vocabulary of stage 0, fitted before training (the trainer does it)
            # and saved with the weights, so a checkpoint is self-contained.
            self.register_buffer("semantic_vocab", torch.zeros(cfg.codebook_size, cfg.ssl_dim))
            self.spd = variants.semantic_predictor(cfg, latent)
        for p in self.semantic_model.parameters():
            p.requires_grad_(False)

    @property
    def hop_length(self) -> int:
        return self.dac.hop_length

    @property
    def semantic_codebook_size(self) -> int:
        """Semantic codes are in `[0, semantic_codebook_size)`."""
        if self.config.semantic_quantizer == "bsq":
            return self.semantic_vq.codebook_size
        return self.semantic_vq.fsq.codebook_size

    @property
    def fixed_window(self) -> bool:
        return self.config.aggregator == "fixed_window"

    @property
    def max_num_quantizers(self) -> int:
        """1 semantic + every acoustic stage."""
        return self.config.n_codebooks + 1

    # ----------------------------------------------------------------------------- encode
    # The stages of `encode`, in order: `frontend` (features), `semantic`, `acoustic`,
    # `align`, `segment`, `aggregate`, `quantize`. `flexicodec_fast.fast` runs the same
    # stages under the same names with fused kernels.

    def semantic(
        self, feats: torch.Tensor, feat_lens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SenseVoice features resampled to the codec frame rate.

        feats `[B, Tl, 560]` -> (`[B, 512, T_sem]` channels-first, `T_sem` per item `[B]`).
        """
        if feat_lens is None:
            feat_lens = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.long)
        feat_lens = feat_lens.to(device=feats.device, dtype=torch.long)
        hidden = self.semantic_model(feats, feat_lens).transpose(1, 2).contiguous()
        return downsample_semantic(hidden, feat_lens, self.config.semantic_downsample_factor)

    def acoustic(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> torch.Tensor:
        """DAC encoder: audio `[B, N]` -> acoustic latents `[B, 512, ceil(N / hop)]`."""
        return self.dac.encode_audio(audio.unsqueeze(1), audio_lens)

    def align(self, sem, sem_lens, ac, audio_lens):
        """Both streams on the codec frames: (sem, ac `[B, 512, T]` zero past each item's
        frames, frames `[B]`), T the longest item's."""
        frames = torch.minimum(sem_lens, self.dac.num_frames(audio_lens).to(sem_lens.device))
        t_max = int(frames.max())
        return mask_after(sem[..., :t_max], frames), mask_after(ac[..., :t_max], frames), frames

    def segment(self, sem: torch.Tensor, frames: torch.Tensor, threshold: float) -> Segmentation:
        """Merging of sem `[B, 512, T]` at `threshold`, or the fixed windows."""
        if self.fixed_window:
            return self.window_segmentation(sem, frames, self.config.window)
        return self.merge(sem, frames, float(threshold))

    def merge(self, sem: torch.Tensor, lengths: torch.Tensor, threshold: float) -> Segmentation:
        """Segment `sem` `[B, 512, T]` (channels-first, as the official similarity reads it)."""
        return segment(sem.transpose(1, 2), threshold, self.config.max_tokens_per_group, lengths)

    def window_segmentation(self, sem, lengths, window: int) -> Segmentation:
        """Fixed windows of `window` frames over sem `[B, 512, T]` (`aggregator:
        fixed_window`)."""
        return variants.window_segmentation(sem, lengths, window)

    def aggregate(self, sem: torch.Tensor, ac: torch.Tensor, seg: Segmentation):
        """Group tokens of both streams, each `[B, C, G]`."""
        if self.fixed_window:
            window = int(seg.token_lengths.max())
            lengths = seg.frame_lengths
            return tuple(
                agg(x, window, lengths)[0]
                for agg, x in ((self.semantic_aggregator, sem), (self.acoustic_aggregator, ac))
            )
        if self.config.use_query_token_aggregator:
            return self.semantic_aggregator(sem, seg), self.acoustic_aggregator(ac, seg)
        means = [group_means(x.transpose(1, 2), seg.group_ids, seg.max_groups) for x in (sem, ac)]
        return tuple(m.transpose(1, 2) for m in means)

    def _convnext(self, stack: nn.Sequential, x: torch.Tensor, lengths: torch.Tensor):
        """Run a ConvNeXt stack on `[B, C, G]` tokens, re-zeroing padded tokens after every
        block so the k=7 convolutions see the zeros a single item would be padded with."""
        x = mask_after(x, lengths)
        for layer in stack:
            x = mask_after(layer(x), lengths)
        return x

    def compress(self, tokens: torch.Tensor, num_groups: torch.Tensor) -> torch.Tensor:
        """Semantic tokens `[B, 512, G]` -> quantizer input `[B, convnext_dim, G]` (ConvNeXt,
        or the focal compressor), zero past `num_groups`."""
        if self.config.compressor == "focal":
            return self.compressor(mask_after(tokens, num_groups), num_groups)
        return self._convnext(self.convnext_encoder, tokens, num_groups)

    def decompress(self, quantized: torch.Tensor, num_groups: torch.Tensor) -> torch.Tensor:
        """Quantized `[B, convnext_dim, G]` -> semantic latent `[B, latent, G]`."""
        if self.config.compressor == "focal":
            return self.decompressor(mask_after(quantized, num_groups), num_groups)
        return self._convnext(self.convnext_decoder, quantized, num_groups)

    def quantize_semantic(self, tokens: torch.Tensor, num_groups: torch.Tensor):
        """`[B, 512, G]` -> (codes `[B, 1, G]` int32, decoded semantic latent `[B, latent, G]`)."""
        quantized, codes = self.semantic_vq(self.compress(tokens, num_groups))
        decoded = self.decompress(quantized, num_groups)
        return mask_after(codes, num_groups), decoded

    def quantize(self, sem_tokens, ac_tokens, num_groups, num_quantizers: int):
        """Tokens `[B, 512, G]` x2 -> (semantic codes `[B, 1, G]` int32, acoustic codes
        `[B, nq-1, G]` int64 or None, decoder latent `[B, latent, G]`): FSQ on the semantic
        tokens, RVQ on the acoustic tokens minus the decoded semantic latent."""
        semantic_codes, sem_decoded = self.quantize_semantic(sem_tokens, num_groups)
        if num_quantizers == 1:
            return semantic_codes, None, sem_decoded
        residual = ac_tokens - sem_decoded
        stages = num_quantizers - 1
        if self.config.acoustic_quantizer == "semantic_rvq":
            first = self.first_stage_codes(ac_tokens, num_groups)
            quantized, codes, *_ = self.dac.quantizer(residual, first, stages)
        else:
            quantized, codes, *_ = self.dac.quantizer(residual, stages)
        return semantic_codes, mask_after(codes, num_groups), quantized + sem_decoded

    def first_stage_codes(self, ac_tokens: torch.Tensor, num_groups: torch.Tensor):
        """Stage-0 codes `[B, G]` at inference (`semantic_rvq`): SPD's predictions from the
        acoustic tokens `[B, latent, G]` (0 past `num_groups`)."""
        return self.spd.predict(ac_tokens, num_groups)

    def _check_encode_args(self, audio, audio_lens, num_quantizers, merging_threshold) -> int:
        """Validate the encode arguments; returns the quantizer count to use."""
        num_quantizers = resolve_num_quantizers(self, num_quantizers, stacklevel=4)
        if (
            isinstance(merging_threshold, bool)
            or not isinstance(merging_threshold, (int, float))
            or not (math.isfinite(merging_threshold))
        ):
            raise InputError(
                f"merging_threshold: expected a finite float (cosine similarity, typically in "
                f"[0.8, 1.0]), got {describe(merging_threshold)}"
            )
        if isinstance(audio, torch.Tensor) and audio.is_floating_point() and audio.numel():
            if not bool(torch.isfinite(audio).all()):
                raise InputError("audio: expected finite samples, got NaN or Inf values")
        return num_quantizers

    def encode(
        self,
        audio: torch.Tensor,
        audio_lens: torch.Tensor | None = None,
        num_quantizers: int = 8,
        merging_threshold: float = 0.91,
        features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        dither: float = 0.0,
    ) -> EncodeResult:
        """Encode 16 kHz audio `[B, N]` (per-item `audio_lens` `[B]` or None).

        `features` `[B, Tl, 560]` (fbank after LFR and CMVN, per-item `feature_lens`) replace
        the front-end: that is how recorded official features are fed. Returns
        `semantic_codes [B, 1, G]` int32, `acoustic_codes [B, nq-1, G]` int64 (None when
        nq = 1), `token_lengths [B, G]` int64, `total_frames [B]` int64 (valid tokens per
        item); codes and lengths are 0 past an item's tokens. For inspection also
        `similarity` (alias `sim_matrix`) `[B, T-1]`, `semantic_features [B, 512, T]` (the
        12.5 Hz SenseVoice features that drive merging) and `decoder_latent [B, latent, G]`
        (see `EncodeResult`).
        """
        num_quantizers = self._check_encode_args(
            audio, audio_lens, num_quantizers, merging_threshold
        )
        if features is None:
            features, feature_lens = self.frontend(audio, audio_lens, dither)
        elif audio_lens is not None and not _is_int_tensor(audio_lens):
            raise InputError(f"audio_lens: expected an integer tensor, got {describe(audio_lens)}")
        if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or not audio.is_floating_point():
            raise InputError(f"audio: expected a float tensor [B, N], got {describe(audio)}")
        audio = audio.float()
        batch = audio.shape[0]
        if features.shape[0] != batch:
            raise InputError(
                f"features: expected {batch} items like audio, got {describe(features)}"
            )
        if audio_lens is None:
            audio_lens = torch.full((batch,), audio.shape[1], dtype=torch.long)
        audio_lens = audio_lens.to(device=audio.device, dtype=torch.long)
        sem, sem_lens = self.semantic(features, feature_lens)
        ac = self.acoustic(audio, audio_lens)
        sem, ac, frames = self.align(sem, sem_lens, ac, audio_lens)
        seg = self.segment(sem, frames, merging_threshold)
        sem_tokens, ac_tokens = self.aggregate(sem, ac, seg)
        semantic_codes, acoustic_codes, latent = self.quantize(
            sem_tokens, ac_tokens, seg.num_groups, num_quantizers
        )
        return EncodeResult.build(
            semantic_codes,
            acoustic_codes,
            seg.token_lengths,
            seg.num_groups,
            seg.similarity,
            sem,
            mask_after(latent, seg.num_groups),
        )

    # ----------------------------------------------------------------------------- decode

    def _check_codes(self, semantic_codes, acoustic_codes, token_lengths):
        if (
            not _is_int_tensor(semantic_codes)
            or semantic_codes.dim() != 3
            or semantic_codes.shape[1] != 1
        ):
            raise InputError(
                "semantic_codes: expected an integer tensor [B, 1, G], "
                f"got {describe(semantic_codes)}"
            )
        batch, _, groups = semantic_codes.shape
        if batch == 0 or groups == 0:
            raise InputError(
                f"semantic_codes: expected B >= 1 and G >= 1, got {describe(semantic_codes)}"
            )
        size = self.semantic_codebook_size
        if int(semantic_codes.min()) < 0 or int(semantic_codes.max()) >= size:
            raise InputError(
                f"semantic_codes: expected values in [0, {size}), got values in "
                f"[{int(semantic_codes.min())}, {int(semantic_codes.max())}]"
            )
        if acoustic_codes is not None:
            n = self.config.n_codebooks
            if (
                not _is_int_tensor(acoustic_codes)
                or acoustic_codes.dim() != 3
                or acoustic_codes.shape[0] != batch
                or acoustic_codes.shape[2] != groups
                or not 1 <= acoustic_codes.shape[1] <= n
            ):
                raise InputError(
                    f"acoustic_codes: expected an integer tensor [{batch}, K, {groups}] with "
                    f"1 <= K <= {n}, or None, got {describe(acoustic_codes)}"
                )
            size = self.config.codebook_size
            if int(acoustic_codes.min()) < 0 or int(acoustic_codes.max()) >= size:
                raise InputError(
                    f"acoustic_codes: expected values in [0, {size}), got values in "
                    f"[{int(acoustic_codes.min())}, {int(acoustic_codes.max())}]"
                )
        if not _is_int_tensor(token_lengths) or token_lengths.shape != (batch, groups):
            raise InputError(
                f"token_lengths: expected an integer tensor [{batch}, {groups}], "
                f"got {describe(token_lengths)}"
            )
        if int(token_lengths.min()) < 0 or bool((token_lengths.sum(dim=1) < 1).any()):
            raise InputError(
                "token_lengths: expected non-negative frame counts with at least one frame per "
                f"item, got per-item totals {token_lengths.sum(dim=1).tolist()}"
            )

    # The stages of `decode`, in order: `dequantize`, `expand`, `decode_frames` (the same
    # names as in `flexicodec_fast.fast`).

    def dequantize(self, semantic_codes, acoustic_codes, num_groups):
        """Codes -> token latents `[B, latent, G]`: (semantic, acoustic or None)."""
        semantic = self.semantic_vq.from_codes(semantic_codes.long())
        sem_decoded = self.decompress(semantic, num_groups)
        if acoustic_codes is None:
            return sem_decoded, None
        return sem_decoded, self.dac.quantizer.from_codes(acoustic_codes.long())

    def expand(self, sem, ac, token_lengths: torch.Tensor) -> torch.Tensor:
        """Token latents `[B, latent, G]` (ac may be None) -> frames `[B, latent, T_max]`:
        each stream repeated by token lengths and summed, or (fixed windows) their sum
        through the window-query decoder, with the window read from `token_lengths`."""
        if self.fixed_window:
            latent = sem if ac is None else sem + ac
            return self.expand_latent(latent, token_lengths)
        z = expand_groups(sem.transpose(1, 2), token_lengths)
        if ac is not None:
            z = expand_groups(ac.transpose(1, 2), token_lengths) + z
        return z.transpose(1, 2)

    def decode_frames(self, z: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[B, latent, T]` -> audio `[B, 1, decoded_length(T)]`: the bottleneck
        transformer and the DAC decoder."""
        if self.bottleneck_transformer is not None:
            z = self.bottleneck_transformer(z, frames)
        return self.dac.decode_latent(z, frames)

    def decode_latent(self, latent: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
        """Token-rate latent `[B, latent, G]` -> audio `[B, 1, decoded_length(T_max)]`."""
        return self.decode_frames(
            self.expand_latent(latent, token_lengths), token_lengths.sum(dim=1)
        )

    def expand_latent(self, latent: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
        """Token-rate latent `[B, latent, G]` -> frames `[B, latent, T_max]`: repeated by
        token lengths, or (fixed windows) the window-query decoder with the window read
        from `token_lengths`."""
        if not self.fixed_window:
            return expand_groups(latent.transpose(1, 2), token_lengths).transpose(1, 2)
        window = variants.window_of(token_lengths)
        frames = token_lengths.sum(dim=1)
        t_max = int(frames.max())
        groups = -(-t_max // window)
        return self.window_decoder(latent[..., :groups], t_max, window, frames)

    def decode(
        self,
        semantic_codes: torch.Tensor,
        acoustic_codes: torch.Tensor | None,
        token_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Codes -> audio `[B, 1, decoded_length(T_max)]`, `T_b = sum_g token_lengths[b, g]`.

        Item b's first `decoded_length(T_b)` samples equal its single-item decode; the rest
        are zero. Groups after an item's last non-empty group are padding.
        """
        self._check_codes(semantic_codes, acoustic_codes, token_lengths)
        token_lengths = token_lengths.long()
        if self.fixed_window:
            variants.window_of(token_lengths)  # refuse other layouts before any work
        groups = torch.arange(token_lengths.shape[1], device=token_lengths.device)
        num_groups = torch.where(token_lengths > 0, groups + 1, 0).amax(dim=1)
        sem, ac = self.dequantize(semantic_codes, acoustic_codes, num_groups)
        z = self.expand(sem, ac, token_lengths)
        return self.decode_frames(z, token_lengths.sum(dim=1))
