"""`fast_encode` / `fast_decode`: the drop-in fast pipeline (design §2, §6).

The reference model's own parameters run through fused ops: the batched front-end,
SenseVoice with flash attention, the folded DAC stacks with fused Snake, one-pass merging
(`kernels.merge`), closed-form interleaving (`kernels.interleave`), RoPE attention
(`kernels.attention`), fused FSQ and all-stage RVQ, and unmerging by one gather. Codes equal
the reference's; everything is batched with per-item lengths (no per-item Python loops) and
an item's codes do not depend on its batch mates.

Related-codec options (docs/related_codecs.md): `semantic_quantizer: bsq` runs the fused
`kernels.bsq` encode/decode; `compressor: focal` runs the model's own focal modules (plain
PyTorch: depth-wise convolutions and GEMMs); `acoustic_quantizer: semantic_rvq` assigns the
SPD's predictions as stage 0 of the fused RVQ (`rvq_encode(first_codes=...)`), decoding is
the plain RVQ decode. `aggregator: fixed_window` (ALMTokenizer) replaces merging with the
reference's windows of `window` frames (`t // w`) and runs its window-query encoders as
the aggregators: the same interleave / transformer / retrieve calls with uniform group ids,
zero means and the [CLS] query as the embedding. Decoding interleaves `w` mask tokens
before each token latent (`kernels.interleave`, the token embedding added), runs the window
decoder's transformer and gathers the frame rows, in place of unmerging; `w` is read back
from `token_lengths`. Both precisions and `attention_window` apply (the window-query
transformers take the aggregators' window); `target_frame_rate` does not (fixed token
rate): an error.

Approximate long-audio mode (`attention_window=` seconds, opt-in): every attention
(SenseVoice, the aggregators, the bottleneck transformer) reaches only that far on each side,
so time grows linearly with the clip instead of quadratically. Codes and audio then differ
from the exact model's; docs/long_audio.md gives the measured differences.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import window_query
from .conv_stack import FastDecoder, FastEncoder
from .fast_modules import FastSenseVoice, FastTransformer
from .kernels import bsq as kbsq
from .kernels import fsq as kfsq
from .kernels import interleave as kinterleave
from .kernels import merge as kmerge
from .kernels import rvq as krvq
from .kernels import unmerge as kunmerge
from .kernels._triton import select_backend
from .reference import variants
from .reference.errors import InputError, describe
from .reference.frontend import SHIFT, WINDOW, num_fbank_frames
from .reference.frontend import check_audio as check_frontend_audio
from .reference.model import FlexiCodec, _mask_after
from .reference.resample import downsample_semantic
from .resampling import resample, resampled_length

PRECISIONS = ("fp32", "bf16")


def _resolve_model(model) -> FlexiCodec:
    """Accept our model or the official `prepare_model` dict layout (`{"model": ...}`)."""
    if isinstance(model, dict) and "model" in model:
        model = model["model"]
    if not isinstance(model, FlexiCodec):
        raise InputError(
            f"model: expected the FlexiCodec returned by flexicodec_fast.prepare_model, got "
            f"{type(model).__name__}"
        )
    return model


def _aggregators(model: FlexiCodec, backend: str):
    """(transformer executor, query embedding `[C]`) of the semantic and the acoustic
    aggregator, or None where the tokens are the plain group means. A fixed-window encoder's
    query is its [CLS] embedding; it is added to zero means, so one interleave serves both."""
    if not (model.fixed_window or model.config.use_query_token_aggregator):
        return None
    aggregators = (model.semantic_aggregator, model.acoustic_aggregator)
    if model.fixed_window:
        queries = [a.query for a in aggregators]
    else:
        queries = [a.query_embedding[0, :, 0] for a in aggregators]
    return tuple(
        (FastTransformer(a.transformer, backend), query)
        for a, query in zip(aggregators, queries, strict=True)
    )


class FastCodec:
    """Everything prepared once per model: folded stacks, stacked RVQ weights, executors.

    Rebuilt automatically when any parameter of the model changes (parameter versions are
    compared on every call), so it is safe to use during or after training.
    """

    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, model: FlexiCodec, backend: str, precision: str = "fp32"):
        self.model = model
        self.backend = backend
        self.precision = precision
        self.version = self._version(model)
        conv_dtype = torch.bfloat16 if precision == "bf16" else None
        channels_last = next(model.parameters()).device.type == "cpu"
        self.encoder = FastEncoder(model.dac.encoder, conv_dtype, channels_last)
        self.decoder = FastDecoder(model.dac.decoder, conv_dtype, channels_last)
        self.rvq = krvq.stacked_weights(model.dac.quantizer)
        self.sensevoice = FastSenseVoice(model.semantic_model)
        self.levels = tuple(model.config.fsq_levels)
        self.aggregators = _aggregators(model, backend)
        self.window_decoder = None
        if model.fixed_window:
            decoder = model.window_decoder
            self.window_decoder = (
                FastTransformer(decoder.transformer, backend),
                decoder.mask_token,
                decoder.token_embedding,
            )
        self.bottleneck = (
            None
            if model.bottleneck_transformer is None
            else FastTransformer(model.bottleneck_transformer, backend)
        )

    @staticmethod
    def _version(model) -> int:
        return sum(p._version for p in model.parameters())

    @classmethod
    def for_model(
        cls, model: FlexiCodec, backend: str = "auto", precision: str = "fp32"
    ) -> FastCodec:
        per_model = cls._cache.setdefault(model, {})
        plan = per_model.get((backend, precision))
        if plan is None or plan.version != cls._version(model):
            plan = per_model[(backend, precision)] = cls(model, backend, precision)
        return plan

    def heavy(self):
        """Context for the compute-heavy parts (SenseVoice, transformers): bf16 autocast in
        bf16 mode. Merging, FSQ and RVQ always run in fp32, so every discrete decision is
        taken on fp32 values."""
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    # ------------------------------------------------------------------------- pieces

    def aggregate(self, which: int, frames, means, merged, groups: int, window=None):
        """Group tokens `[B, G, C]` of one stream (frames `[B, T, C]`); `window`: the
        approximate mode's positions each side (None: the model's own attention)."""
        if self.aggregators is None:
            return means[:, :groups]
        transformer, embedding = self.aggregators[which]
        sequence = kinterleave.interleave(
            frames,
            means[:, :groups],
            embedding,
            merged.group_ids,
            merged.lengths,
            merged.num_groups,
            backend=self.backend,
        )
        with self.heavy():
            out = transformer(sequence, merged.lengths + merged.num_groups, window).float()
        return kinterleave.retrieve(out, merged.group_ids, merged.num_groups, backend=self.backend)

    def quantize_semantic(self, tokens: torch.Tensor, num_groups: torch.Tensor):
        """tokens `[B, G, 512]` -> (codes `[B, 1, G]` int32, decoded latent `[B, latent, G]`)."""
        model = self.model
        hidden = model.compress(tokens.transpose(1, 2), num_groups).transpose(1, 2).contiguous()
        if model.config.semantic_quantizer == "bsq":
            bsq = model.semantic_vq.bsq
            quantized, codes = kbsq.bsq(
                hidden,
                bsq.project_in.weight,
                bsq.project_in.bias,
                bsq.project_out.weight,
                bsq.project_out.bias,
                backend=self.backend,
            )
        else:
            fsq = model.semantic_vq.fsq
            quantized, codes = kfsq.fsq(
                hidden,
                fsq.project_in.weight,
                fsq.project_in.bias,
                fsq.project_out.weight,
                fsq.project_out.bias,
                self.levels,
                backend=self.backend,
            )
        decoded = model.decompress(quantized.transpose(1, 2), num_groups)
        return _mask_after(codes.unsqueeze(1), num_groups), decoded

    def decode_semantic(self, codes: torch.Tensor, num_groups: torch.Tensor) -> torch.Tensor:
        model = self.model
        if model.config.semantic_quantizer == "bsq":
            bsq = model.semantic_vq.bsq
            quantized = kbsq.bsq_decode(
                codes[:, 0], bsq.project_out.weight, bsq.project_out.bias, backend=self.backend
            )
        else:
            fsq = model.semantic_vq.fsq
            quantized = kfsq.fsq_decode(
                codes[:, 0],
                fsq.project_out.weight,
                fsq.project_out.bias,
                self.levels,
                backend=self.backend,
            )
        return model.decompress(quantized.transpose(1, 2), num_groups)

    def expand_windows(self, tokens, frames, window: int, attention_window=None):
        """The window-query decoder: token latents `[B, G, C]` -> frames `[B, T_max, C]`
        (0 past an item's `frames` `[B]`); `w` mask tokens before each token, the
        transformer, the mask rows. `attention_window`: positions each side (None: exact)."""
        transformer, mask_token, embedding = self.window_decoder
        t_max = int(frames.max())
        group_ids, num_groups, groups = window_query.window_segments(frames, t_max, window)
        tokens = tokens[:, :groups].contiguous()
        masks = mask_token.to(tokens.dtype).expand(tokens.shape[0], t_max, -1)
        sequence = kinterleave.interleave(
            masks,
            tokens,
            embedding,
            group_ids,
            frames,
            num_groups,
            backend=self.backend,
        )
        with self.heavy():
            out = transformer(sequence, frames + num_groups, attention_window).float()
        return window_query.gather_frames(out, group_ids)


def _check_options(backend: str, precision: str):
    if backend not in ("auto", "triton", "torch"):
        raise InputError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")


def prepare_audio(audio, audio_lens, sample_rate: int, mix_down: bool, device):
    """Validate and bring audio to 16 kHz mono `[B, N]` float32 on `device`, with lengths."""
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise InputError(
            f"audio: expected a float tensor [B, N] (or [B, C, N] with mix_down), "
            f"got {describe(audio)}"
        )
    if audio.dim() == 3:
        if audio.shape[1] != 1 and not mix_down:
            raise InputError(
                f"audio: got {audio.shape[1]} channels ({describe(audio)}); FlexiCodec is mono: "
                "pass mix_down=True to average the channels"
            )
        audio = audio.mean(dim=1)
    if audio.dim() != 2:
        raise InputError(f"audio: expected a float tensor [B, N], got {describe(audio)}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise InputError(f"sample_rate: expected a positive int (Hz), got {describe(sample_rate)}")
    audio = audio.to(device=device, dtype=torch.float32)
    if audio.numel() and not bool(torch.isfinite(audio).all()):
        raise InputError("audio: expected finite samples, got NaN or Inf values")
    if sample_rate != 16000:
        if audio_lens is not None:
            if not isinstance(audio_lens, torch.Tensor) or audio_lens.dtype.is_floating_point:
                raise InputError(
                    f"audio_lens: expected an integer tensor [B], got {describe(audio_lens)}"
                )
            # The filter reaches past an item's end: what lies there must be the silence a
            # lone item is padded with, not its batch mates' padding.
            valid = torch.arange(audio.shape[-1], device=device) < audio_lens.to(device)[:, None]
            audio = audio.masked_fill(~valid, 0.0)
            audio_lens = torch.tensor(
                [resampled_length(int(n), sample_rate) for n in audio_lens.tolist()],
                dtype=torch.long,
            )
        audio = resample(audio, sample_rate, 16000)
    return audio, audio_lens


def _frame_rate_thresholds(similarity, frames, max_tokens, target: float) -> torch.Tensor:
    """Per item, the threshold whose average frame rate (groups per frame x 12.5 Hz) is the
    largest not above `target`, `[B]` float64.

    The group count is non-decreasing in the threshold (a higher threshold only adds
    boundaries, and splitting a run never reduces its forced groups) and changes only at the
    item's similarity values, so a binary search over each item's sorted similarities finds
    it without re-encoding; all items search together. The result is one of the item's
    similarities, or -inf when even the fewest groups exceed the target.
    """
    from .reference.merging import group_starts

    batch, transitions = similarity.shape
    valid_frame = torch.arange(transitions + 1, device=similarity.device) < frames.view(-1, 1)
    valid_sim = valid_frame[:, 1:]
    ordered = torch.where(valid_sim, similarity, torch.inf).sort(dim=1).values
    candidates = torch.cat([similarity.new_full((batch, 1), -torch.inf), ordered], dim=1)

    def rate(index):
        threshold = candidates.gather(1, index.view(-1, 1))
        starts = group_starts(similarity, threshold, max_tokens) & valid_frame
        return starts.sum(dim=1) / frames * 12.5

    lo = torch.zeros_like(frames)
    hi = frames - 1
    while bool((lo < hi).any()):
        mid = (lo + hi + 1) // 2
        fits = rate(mid) <= target
        searching = lo < hi
        lo = torch.where(searching & fits, mid, lo)
        hi = torch.where(searching & ~fits, mid - 1, hi)
    return candidates.gather(1, lo.view(-1, 1))[:, 0].double()


FBANK_CHUNK_FRAMES = 6000


def _features(frontend, audio, audio_lens, dither):
    """The front-end; long deterministic inputs compute their fbank `FBANK_CHUNK_FRAMES`
    frames (1 minute) at a time. Every fbank frame depends only on its own 400 samples, so
    the chunks meet exactly; only the stacked `[B, Tl, 560]` features exist whole. (The
    official dither stream is one draw per item, so dithered inputs run whole.)"""
    lens = check_frontend_audio(audio, audio_lens)
    num_frames = num_fbank_frames(lens)
    frames = int(num_frames.max())
    if dither != 0.0 or frames <= 2 * FBANK_CHUNK_FRAMES:
        return frontend(audio, audio_lens, dither)
    pieces = []
    for f0 in range(0, frames, FBANK_CHUNK_FRAMES):
        f1 = min(frames, f0 + FBANK_CHUNK_FRAMES)
        chunk = audio[:, f0 * SHIFT : (f1 - 1) * SHIFT + WINDOW]
        pieces.append(frontend.fbank(chunk, torch.full_like(num_frames, f1 - f0)))
    return frontend.lfr_cmvn(torch.cat(pieces, dim=1), num_frames)


def fast_encode(
    audio: torch.Tensor,
    model,
    sample_rate: int = 16000,
    num_quantizers: int = 8,
    merging_threshold: float = 0.91,
    audio_lens: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    target_frame_rate: float | None = None,
    dither: float = 0.0,
    mix_down: bool = False,
    attention_window: float | None = None,
) -> dict:
    """Encode audio `[B, N]` at `sample_rate`; the same arguments and outputs as the official
    `encode_flexicodec` (see `FlexiCodec.encode` for the keys), plus:

    backend: "auto" (Triton on CUDA, torch paths on CPU), "triton" or "torch".
    precision: "fp32" (codes identical to the reference) or "bf16".
    target_frame_rate: Hz; per item, the threshold giving the largest average frame rate
        (tokens per 12.5 Hz frame x 12.5) not above it is used instead of
        `merging_threshold`; the chosen values are returned as `thresholds` `[B]`.
    dither: front-end dither (0: deterministic; 1.0: the official random behaviour).
    mix_down: average the channels of `[B, C, N]` input (else multi-channel is an error).
    attention_window: seconds; approximate mode: each attention sees only this far on each
        side (linear time for long audio; codes differ from the exact model's). None: exact.
    """
    model = _resolve_model(model)
    _check_options(backend, precision)
    windows = attention_windows(attention_window)
    device = next(model.parameters()).device
    audio, audio_lens = prepare_audio(audio, audio_lens, sample_rate, mix_down, device)
    num_quantizers = model._check_encode_args(audio, audio_lens, num_quantizers, merging_threshold)
    if target_frame_rate is not None and not (
        isinstance(target_frame_rate, (int, float)) and 0 < target_frame_rate <= 12.5
    ):
        raise InputError(
            f"target_frame_rate: expected a number in (0, 12.5] Hz, "
            f"got {describe(target_frame_rate)}"
        )
    if model.fixed_window and target_frame_rate is not None:
        raise InputError(
            "target_frame_rate: a fixed-window model (aggregator: fixed_window) has a "
            f"fixed token rate (window {model.config.window}); leave it None"
        )
    fast = FastCodec.for_model(model, backend, precision)
    with torch.inference_mode():
        return _encode(
            model,
            fast,
            audio,
            audio_lens,
            num_quantizers,
            merging_threshold,
            target_frame_rate,
            dither,
            windows,
        )


@dataclass(frozen=True)
class AttentionWindows:
    """Positions each side that each attention reaches in the approximate mode: SenseVoice
    runs at 1000/60 rows a second, the aggregators' interleaved frames + queries at most 25,
    the bottleneck transformer at 12.5."""

    sensevoice: int
    aggregator: int
    bottleneck: int


def attention_windows(seconds) -> AttentionWindows | None:
    """`attention_window` seconds -> per-attention windows (None: exact attention)."""
    if seconds is None:
        return None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise InputError(
            f"attention_window: expected a positive number of seconds or None, "
            f"got {describe(seconds)}"
        )
    return AttentionWindows(
        math.ceil(seconds * 1000 / 60), math.ceil(seconds * 25), math.ceil(seconds * 12.5)
    )


def _encode(
    model, fast, audio, audio_lens, num_quantizers, threshold, target_frame_rate, dither, windows
):
    cfg = model.config
    batch = audio.shape[0]
    features, feature_lens = _features(model.frontend, audio, audio_lens, dither)
    with fast.heavy():
        hidden = fast.sensevoice(
            features, feature_lens, None if windows is None else windows.sensevoice
        ).float()
    sem, sem_lens = downsample_semantic(
        hidden.transpose(1, 2).contiguous(), feature_lens, cfg.semantic_downsample_factor
    )
    if audio_lens is None:
        audio_lens = torch.full((batch,), audio.shape[1], dtype=torch.long)
    audio_lens = audio_lens.to(device=audio.device, dtype=torch.long)
    hop = model.hop_length
    # The encoder masks whole hops: the samples between an item's end and its last hop
    # boundary must be the zeros it is padded with alone, not whatever the batch holds there.
    padded = F.pad(_mask_after(audio.unsqueeze(1), audio_lens), (0, -audio.shape[1] % hop))
    ac = fast.encoder(padded, model.dac.num_frames(audio_lens) * hop).float()
    frames = torch.minimum(sem_lens, model.dac.num_frames(audio_lens).to(sem_lens.device))
    t_max = int(frames.max())
    sem = _mask_after(sem[..., :t_max], frames)
    ac = _mask_after(ac[..., :t_max], frames)
    # Channels-last views of channels-first tensors: the similarity reduction then runs in
    # the official memory order (see reference.merging.adjacent_cosine).
    sem_t, ac_t = sem.transpose(1, 2), ac.transpose(1, 2)
    if select_backend(fast.backend, sem.device) == "triton":
        # The kernels read rows with unit stride (their reductions round differently anyway).
        sem_t, ac_t = sem_t.contiguous(), ac_t.contiguous()

    thresholds = None
    if target_frame_rate is not None:
        seg = kmerge.segment(
            sem_t,
            frames,
            threshold=1.0,
            max_tokens_per_group=cfg.max_tokens_per_group,
            backend=fast.backend,
        )
        thresholds = _frame_rate_thresholds(
            seg.similarity, frames, cfg.max_tokens_per_group, float(target_frame_rate)
        )
        threshold = thresholds.to(sem.device, torch.float32).view(-1, 1)
    if model.fixed_window:
        merged = _windows(model, sem, sem_t, ac_t, frames)
    else:
        merged = _merge(fast, sem_t, ac_t, frames, threshold, cfg.max_tokens_per_group)
    groups = int(merged.num_groups.max())

    window = None if windows is None else windows.aggregator
    sem_tokens = fast.aggregate(0, sem_t, merged.means[0], merged, groups, window)
    ac_tokens = fast.aggregate(1, ac_t, merged.means[1], merged, groups, window)
    semantic_codes, sem_decoded = fast.quantize_semantic(sem_tokens.float(), merged.num_groups)
    acoustic_codes = None
    latent = sem_decoded
    if num_quantizers > 1:
        residual = (ac_tokens.float() - sem_decoded.transpose(1, 2)).contiguous()
        first_codes = None
        if cfg.acoustic_quantizer == "semantic_rvq":
            ac_channels_first = ac_tokens.float().transpose(1, 2)
            first_codes = model.first_stage_codes(ac_channels_first, merged.num_groups)
        acoustic_codes, quantized = krvq.rvq_encode(
            residual,
            *fast.rvq,
            num_quantizers - 1,
            merged.num_groups,
            first_codes=first_codes,
            backend=fast.backend,
        )
        latent = quantized.transpose(1, 2) + sem_decoded
    out = {
        "semantic_codes": semantic_codes,
        "acoustic_codes": acoustic_codes,
        "token_lengths": merged.token_lengths[:, :groups].contiguous(),
        "total_frames": merged.num_groups,
        "similarity": merged.similarity,
        "sim_matrix": merged.similarity,
        "semantic_features": sem,
        "decoder_latent": _mask_after(latent, merged.num_groups),
    }
    if thresholds is not None:
        out["thresholds"] = thresholds
    return out


@dataclass
class _MergeResult:
    """Segmentation of a batch (sized for G = T), its valid frames and both streams' means."""

    group_ids: torch.Tensor
    token_lengths: torch.Tensor
    num_groups: torch.Tensor
    similarity: torch.Tensor
    lengths: torch.Tensor
    means: tuple[torch.Tensor, ...]


def _merge(fast, sem_t, ac_t, frames, threshold, max_tokens) -> _MergeResult:
    """Segment and average both streams; a per-item threshold `[B, 1]` takes the reference
    segmentation (the fused kernel takes one threshold per launch)."""
    if isinstance(threshold, torch.Tensor):
        from .reference.merging import group_means, segment

        seg = segment(sem_t, threshold, max_tokens, frames)
        groups = seg.max_groups
        means = tuple(group_means(x, seg.group_ids, groups) for x in (sem_t, ac_t))
        return _MergeResult(
            seg.group_ids, seg.token_lengths, seg.num_groups, seg.similarity, frames, means
        )
    merged = kmerge.merge(
        sem_t,
        frames,
        threshold=float(threshold),
        max_tokens_per_group=max_tokens,
        streams=(sem_t, ac_t),
        backend=fast.backend,
    )
    return _MergeResult(
        merged.group_ids,
        merged.token_lengths,
        merged.num_groups,
        merged.similarity,
        frames,
        merged.means,
    )


def _windows(model, sem, sem_t, ac_t, frames) -> _MergeResult:
    """The fixed windows of `model.config.window` frames (the reference's segmentation) and
    zero means `[B, G, C]` for both streams: a window's query is its embedding alone."""
    seg = model.window_segmentation(sem, frames, model.config.window)
    means = tuple(x.new_zeros(x.shape[0], seg.max_groups, x.shape[2]) for x in (sem_t, ac_t))
    return _MergeResult(
        seg.group_ids, seg.token_lengths, seg.num_groups, seg.similarity, frames, means
    )


def fast_decode(
    model,
    semantic_codes: torch.Tensor,
    acoustic_codes: torch.Tensor | None,
    token_lengths: torch.Tensor,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    attention_window: float | None = None,
) -> torch.Tensor:
    """Codes -> audio `[B, 1, decoded_length(T_max)]`; the same arguments and output as the
    official `decode_from_codes`. Item b's audio past its `decoded_length(T_b)` is zero.
    attention_window: seconds; approximate mode for long audio (see `fast_encode`)."""
    model = _resolve_model(model)
    _check_options(backend, precision)
    windows = attention_windows(attention_window)
    model._check_codes(semantic_codes, acoustic_codes, token_lengths)
    device = next(model.parameters()).device
    semantic_codes, token_lengths = semantic_codes.to(device), token_lengths.to(device).long()
    if acoustic_codes is not None:
        acoustic_codes = acoustic_codes.to(device)
    # Refuse token lengths that are no fixed window's before any work (as the reference).
    token_window = variants.window_of(token_lengths) if model.fixed_window else None
    fast = FastCodec.for_model(model, backend, precision)
    with torch.inference_mode():
        groups = torch.arange(token_lengths.shape[1], device=device)
        num_groups = torch.where(token_lengths > 0, groups + 1, 0).amax(dim=1)
        sem = fast.decode_semantic(semantic_codes, num_groups).transpose(1, 2)
        ac = None
        if acoustic_codes is not None:
            r = fast.rvq
            ac = krvq.rvq_decode(acoustic_codes, r.cb, r.out_w, r.out_b, backend=fast.backend)
        frames = token_lengths.sum(dim=1)
        if token_window is None:
            z = kunmerge.unmerge(
                sem.contiguous(), ac, token_lengths, int(frames.max()), backend=fast.backend
            )
        else:
            tokens = sem if ac is None else sem + ac
            z = fast.expand_windows(
                tokens, frames, token_window, None if windows is None else windows.aggregator
            )
        if fast.bottleneck is not None:
            with fast.heavy():
                window = None if windows is None else windows.bottleneck
                z = fast.bottleneck(z, frames, window).float()
        return fast.decoder(z.transpose(1, 2).float(), frames).float()
