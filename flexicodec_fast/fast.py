"""`fast_encode` / `fast_decode`: the fast pipeline (design §2, §6, §9).

The reference model's own parameters run through fused ops: the batched front-end,
SenseVoice with flash attention, the folded DAC stacks with fused Snake, one-pass merging
(`kernels.merge`), closed-form interleaving (`kernels.interleave`), RoPE attention
(`kernels.attention`), fused FSQ and all-stage RVQ, and unmerging by one gather. Codes equal
the reference's; everything is batched with per-item lengths (no per-item Python loops) and
an item's codes do not depend on its batch mates.

One pipeline, two executions. The stages below (`features`, `semantic`, `acoustic`,
`align`, `segment`, `aggregate`, `quantize`; `dequantize`, `expand`, `decode_frames`) are
the reference's named stages (`FlexiCodec.encode` / `decode`) run fast. Every shape they
make comes from a `Sizes` computed on the host from the clips' sample counts, and every
length they use travels as a device tensor, so they never read a tensor's value on the host:
`fast_encode` sizes a batch by its longest item and reads the token count once (to trim
`G`), the `Engine` sizes it by its length bucket and keeps `G = T` (static shapes, CUDA
graphs, no host syncs).

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

import contextlib
import enum
import weakref
from collections.abc import Callable, Sequence
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
from .model_input import resolve_model
from .options import (
    PRECISIONS,
    AttentionBands,
    EncodeOptions,
    attention_bands,
    check_backend_precision,
)
from .reference import variants
from .reference.errors import InputError, describe
from .reference.frontend import LFR_N, SHIFT, WINDOW, num_fbank_frames
from .reference.frontend import check_audio as check_frontend_audio
from .reference.merging import Segmentation, group_means, group_starts
from .reference.merging import segment as reference_segment
from .reference.model import FlexiCodec, mask_after
from .reference.resample import downsample_semantic
from .reference.result import EncodeResult
from .resampling import resample, resampled_length

__all__ = [
    "PRECISIONS",
    "AttentionBands",
    "EncodeOptions",
    "EncodeResult",
    "FastCodec",
    "Sizes",
    "attention_bands",
    "fast_decode",
    "fast_encode",
]


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


class Stream(enum.IntEnum):
    """The two token streams; the index of a stream's aggregator in `FastCodec.aggregators`."""

    SEMANTIC = 0
    ACOUSTIC = 1


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def heavy(self):
        """Context for the compute-heavy parts (SenseVoice, transformers): bf16 autocast in
        bf16 mode. Merging, FSQ and RVQ always run in fp32, so every discrete decision is
        taken on fp32 values."""
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    @contextlib.contextmanager
    def matmul_precision(self):
        """TF32 tensor cores for fp32 matmuls and cuDNN convolutions in "tf32" mode only.
        PyTorch lets cuDNN use TF32 by default; "fp32" (and "bf16", whose decisions must be
        fp32) turn it off, so CUDA codes equal the reference run the same way. Restored on
        exit. No effect on a CPU."""
        if self.device.type != "cuda":
            yield
            return
        allow = self.precision == "tf32"
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def aggregate(self, stream: Stream, frames, means, seg: Segmentation, band=None, full=False):
        """Group tokens `[B, G, C]` of one stream from its frames `[B, T, C]` and group means
        `[B, G, C]` (G: the columns the caller keeps); `band`: the approximate mode's
        positions each side (None: the model's own attention); `full`: every item fills all
        T frames and G tokens (known on the host), so attention needs no masks."""
        if self.aggregators is None:
            return means
        transformer, embedding = self.aggregators[stream]
        sequence = kinterleave.interleave(
            frames,
            means,
            embedding,
            seg.group_ids,
            seg.frame_lengths,
            seg.num_groups,
            backend=self.backend,
        )
        with self.heavy():
            lengths = None if full else seg.frame_lengths + seg.num_groups
            out = transformer(sequence, lengths, band).float()
        return kinterleave.retrieve(out, seg.group_ids, seg.num_groups, backend=self.backend)

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
        return mask_after(codes.unsqueeze(1), num_groups), decoded

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

    def expand_windows(self, tokens, frames, t_max: int, token_window: int, band=None):
        """The window-query decoder: token latents `[B, G, C]` -> frames `[B, t_max, C]`
        (0 past an item's `frames` `[B]`); `w` mask tokens before each token, the
        transformer, the mask rows. `band`: attention positions each side (None: exact)."""
        transformer, mask_token, embedding = self.window_decoder
        group_ids, num_groups, groups = window_query.window_segments(frames, t_max, token_window)
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
            out = transformer(sequence, frames + num_groups, band).float()
        return window_query.gather_frames(out, group_ids)


# --------------------------------------------------------------------------------- sizes


def _semantic_frames(feature_frames: int, factor: float) -> int:
    """12.5 Hz frames from `feature_frames` SenseVoice rows: `int(T_in / factor)`, as
    `reference.resample.downsampled_length` (float64 truncation)."""
    if factor == int(factor):
        return feature_frames // int(factor)
    return int(feature_frames / factor)


@dataclass(frozen=True)
class Sizes:
    """Every size an encode of one batch makes, computed on the host from sample counts.

    samples: per item, 16 kHz samples; padded: the audio tensor's N (>= every item).
    fbank_max, feature_max, semantic_max, frame_max: the fbank, LFR, 12.5 Hz semantic and
    codec frame axes of the batch; `static` sizes them by `padded` (the engine's buckets:
    the same shapes for every batch of a bucket), else by the longest item.
    features_full, hops_full, frames_full: every item fills that axis, so nothing is masked
    (never with `static`: every batch of a bucket must run the same code, CUDA graph
    included, whatever its items' lengths).
    """

    samples: tuple[int, ...]
    padded: int
    fbank_max: int
    feature_max: int
    semantic_max: int
    frame_max: int
    features_full: bool
    hops_full: bool
    frames_full: bool

    @classmethod
    def of(cls, model: FlexiCodec, samples: Sequence[int], padded: int, static: bool) -> Sizes:
        samples = tuple(int(n) for n in samples)
        hop = model.hop_length
        factor = model.config.semantic_downsample_factor

        def fbank(n):
            return 1 + (n - WINDOW) // SHIFT

        def features(n):
            return -(-fbank(n) // LFR_N)

        def frames(n):
            return min(_semantic_frames(features(n), factor), -(-n // hop))

        longest = padded if static else max(samples)
        feature_max = features(longest)
        frame_max = frames(longest)
        dynamic = not static
        return cls(
            samples=samples,
            padded=padded,
            fbank_max=fbank(longest),
            feature_max=feature_max,
            semantic_max=_semantic_frames(feature_max, factor),
            frame_max=frame_max,
            features_full=dynamic and all(features(n) == feature_max for n in samples),
            hops_full=dynamic and all(-(-n // hop) >= -(-padded // hop) for n in samples),
            frames_full=dynamic and all(frames(n) == frame_max for n in samples),
        )


# -------------------------------------------------------------------- encode stages


FBANK_CHUNK_FRAMES = 6000


def features(fast: FastCodec, audio, lens, sizes: Sizes, dither: float):
    """Front-end: audio `[B, N]` -> (features `[B, Tl, 560]`, lengths `[B]`). Long
    deterministic inputs compute their fbank `FBANK_CHUNK_FRAMES` frames (1 minute) at a time.
    Every fbank frame depends only on its own 400 samples, so the chunks meet exactly; only
    the stacked features exist whole. (The official dither stream is one draw per item, so
    dithered inputs run whole.)"""
    frontend = fast.model.frontend
    num_frames = num_fbank_frames(lens)
    total = sizes.fbank_max
    if dither != 0.0 or total <= 2 * FBANK_CHUNK_FRAMES:
        fbank = frontend.fbank(audio, num_frames, dither, frames=total)
    else:
        fbank = torch.cat(
            [
                frontend.fbank(
                    audio[
                        :, f0 * SHIFT : (min(total, f0 + FBANK_CHUNK_FRAMES) - 1) * SHIFT + WINDOW
                    ],
                    torch.full_like(num_frames, min(total, f0 + FBANK_CHUNK_FRAMES) - f0),
                )
                for f0 in range(0, total, FBANK_CHUNK_FRAMES)
            ],
            dim=1,
        )
    return frontend.lfr_cmvn(fbank, num_frames, frames=sizes.feature_max)


def semantic(fast: FastCodec, feats, feat_lens, sizes: Sizes, bands):
    """SenseVoice at 12.5 Hz: features -> (`[B, 512, T_sem]`, lengths `[B]`)."""
    with fast.heavy():
        hidden = fast.sensevoice(
            feats,
            None if sizes.features_full else feat_lens,
            None if bands is None else bands.sensevoice,
        ).float()
    return downsample_semantic(
        hidden.transpose(1, 2).contiguous(),
        feat_lens,
        fast.model.config.semantic_downsample_factor,
        frames=sizes.semantic_max,
    )


def acoustic(fast: FastCodec, audio, lens, sizes: Sizes):
    """DAC encoder: audio `[B, N]` -> `[B, 512, ceil(N / hop)]`."""
    model = fast.model
    hop = model.hop_length
    # The encoder masks whole hops: the samples between an item's end and its last hop
    # boundary must be the zeros it is padded with alone, not whatever the batch holds there.
    padded = F.pad(mask_after(audio.unsqueeze(1), lens), (0, -audio.shape[1] % hop))
    hop_lens = None if sizes.hops_full else model.dac.num_frames(lens) * hop
    return fast.encoder(padded, hop_lens).float()


def align(fast: FastCodec, sem, sem_lens, ac, lens, sizes: Sizes):
    """Both streams on the codec frames: (sem, ac `[B, 512, T]`, zero past each item's
    frames `[B]`, and those frames)."""
    frames = torch.minimum(sem_lens, fast.model.dac.num_frames(lens))
    t = sizes.frame_max
    return mask_after(sem[..., :t], frames), mask_after(ac[..., :t], frames), frames


def _binary_search_steps(frames: int) -> int:
    """Halvings that take a search range of `frames` candidates down to one."""
    return max(frames - 1, 1).bit_length()


def frame_rate_thresholds(similarity, frames, max_tokens, target: float, steps: int):
    """Per item, the threshold whose average frame rate (groups per frame x 12.5 Hz) is the
    largest not above `target`, `[B]` float64.

    The group count is non-decreasing in the threshold (a higher threshold only adds
    boundaries, and splitting a run never reduces its forced groups) and changes only at the
    item's similarity values, so a binary search over each item's sorted similarities finds
    it without re-encoding; all items search together, `steps` halvings (enough for the
    longest item, so the count is known on the host). The result is one of the item's
    similarities, or -inf when even the fewest groups exceed the target.
    """
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
    for _ in range(steps):
        mid = (lo + hi + 1) // 2
        fits = rate(mid) <= target
        searching = lo < hi
        lo = torch.where(searching & fits, mid, lo)
        hi = torch.where(searching & ~fits, mid - 1, hi)
    return candidates.gather(1, lo.view(-1, 1))[:, 0].double()


def segment(fast: FastCodec, sem, sem_t, ac_t, frames, sizes: Sizes, options: EncodeOptions):
    """Merging (or the fixed windows): (`Segmentation` sized for G = T, both streams' group
    means `[B, T, C]`, chosen thresholds `[B]` float64 or None).

    `sem_t`, `ac_t` `[B, T, C]`: the frames; `sem` `[B, C, T]`: the fixed-window layout."""
    model = fast.model
    max_tokens = model.config.max_tokens_per_group
    t = sizes.frame_max
    if model.fixed_window:
        seg = model.window_segmentation(sem, frames, model.config.window)
        means = tuple(x.new_zeros(x.shape[0], seg.max_groups, x.shape[2]) for x in (sem_t, ac_t))
        return seg, means, None
    if options.target_frame_rate is None:
        merged = kmerge.merge(
            sem_t,
            frames,
            threshold=float(options.merging_threshold),
            max_tokens_per_group=max_tokens,
            streams=(sem_t, ac_t),
            backend=fast.backend,
        )
        seg = Segmentation(
            merged.similarity, merged.group_ids, merged.token_lengths, merged.num_groups, frames
        )
        return seg, merged.means, None
    similarity = kmerge.segment(
        sem_t, frames, threshold=1.0, max_tokens_per_group=max_tokens, backend=fast.backend
    ).similarity
    thresholds = frame_rate_thresholds(
        similarity, frames, max_tokens, float(options.target_frame_rate), _binary_search_steps(t)
    )
    # One threshold per item: the reference segmentation (the fused kernel takes one per
    # launch), with the group axis sized for G = T like the kernel's.
    seg = reference_segment(
        sem_t, thresholds.to(sem_t.device, torch.float32).view(-1, 1), max_tokens, frames, t
    )
    means = tuple(group_means(x, seg.group_ids, t) for x in (sem_t, ac_t))
    return seg, means, thresholds


def quantize(fast: FastCodec, sem_tokens, ac_tokens, num_groups, num_quantizers: int):
    """Tokens `[B, G, C]` x2 -> (semantic codes `[B, 1, G]` int32, acoustic codes
    `[B, nq-1, G]` int64 or None, decoder latent `[B, latent, G]`)."""
    model = fast.model
    semantic_codes, sem_decoded = fast.quantize_semantic(sem_tokens.float(), num_groups)
    if num_quantizers == 1:
        return semantic_codes, None, sem_decoded
    residual = (ac_tokens.float() - sem_decoded.transpose(1, 2)).contiguous()
    first_codes = None
    if model.config.acoustic_quantizer == "semantic_rvq":
        first_codes = model.first_stage_codes(ac_tokens.float().transpose(1, 2), num_groups)
    acoustic_codes, quantized = krvq.rvq_encode(
        residual,
        *fast.rvq,
        num_quantizers - 1,
        num_groups,
        first_codes=first_codes,
        backend=fast.backend,
    )
    return semantic_codes, acoustic_codes, quantized.transpose(1, 2) + sem_decoded


ENCODE_STAGES = ("features", "semantic", "acoustic", "align", "segment", "aggregate", "quantize")
DECODE_STAGES = ("dequantize", "expand", "decode_frames")


def _no_tick(stage: str) -> None:
    """The default `tick`: nobody is watching."""


def encode_stages(
    fast: FastCodec,
    audio,
    lens,
    sizes: Sizes,
    options: EncodeOptions,
    static: bool,
    tick: Callable[[str], None] | None = None,
) -> EncodeResult:
    """The encode pipeline on validated 16 kHz audio `[B, N]` with lengths `[B]` (a device
    tensor) and `options` resolved for the model. `static`: keep `G = T` token columns
    (every shape from `sizes`, no host reads: the engine); else trim to the batch's largest
    token count, read once on the host (`fast_encode`). `tick(name)` is called as each of
    `ENCODE_STAGES` is issued (the engine's progress)."""
    tick = tick or _no_tick
    bands = options.bands
    feats, feat_lens = features(fast, audio, lens, sizes, options.dither)
    tick("features")
    sem, sem_lens = semantic(fast, feats, feat_lens, sizes, bands)
    tick("semantic")
    ac = acoustic(fast, audio, lens, sizes)
    tick("acoustic")
    sem, ac, frames = align(fast, sem, sem_lens, ac, lens, sizes)
    tick("align")
    # Channels-last views of channels-first tensors: the similarity reduction then runs in
    # the official memory order (see reference.merging.adjacent_cosine).
    sem_t, ac_t = sem.transpose(1, 2), ac.transpose(1, 2)
    if select_backend(fast.backend, sem.device) == "triton":
        # The kernels read rows with unit stride (their reductions round differently anyway).
        sem_t, ac_t = sem_t.contiguous(), ac_t.contiguous()
    seg, means, thresholds = segment(fast, sem, sem_t, ac_t, frames, sizes, options)
    tick("segment")
    if static:
        groups, full = seg.max_groups, False
    else:
        counts = seg.num_groups.tolist()
        groups = max(counts)
        # Every item fills the interleaved frames + tokens: no attention masks needed.
        full = sizes.frames_full and len(set(counts)) == 1
    band = None if bands is None else bands.aggregator
    sem_tokens, ac_tokens = (
        fast.aggregate(stream, x, m[:, :groups], seg, band, full)
        for stream, x, m in zip(Stream, (sem_t, ac_t), means, strict=True)
    )
    tick("aggregate")
    semantic_codes, acoustic_codes, latent = quantize(
        fast, sem_tokens, ac_tokens, seg.num_groups, options.num_quantizers
    )
    tick("quantize")
    return EncodeResult.build(
        semantic_codes,
        acoustic_codes,
        seg.token_lengths[:, :groups].contiguous(),
        seg.num_groups,
        seg.similarity,
        sem,
        mask_after(latent, seg.num_groups),
        thresholds,
    )


# -------------------------------------------------------------------- eager encode


def prepare_audio(audio, audio_lens, sample_rate: int, mix_down: bool, device):
    """Validate and bring audio to 16 kHz mono `[B, N]` float32 on `device`, with lengths."""
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise InputError(
            f"audio: expected a float tensor [B, N] (or [B, C, N] with mix_down), "
            f"got {describe(audio)}"
        )
    if audio.dim() == 3:
        if audio.shape[1] != 1 and not mix_down:
            hint = ""
            if audio.shape[2] < audio.shape[1]:
                hint = (
                    f"; it looks channels-last ({audio.shape[2]} channels of "
                    f"{audio.shape[1]} samples, as soundfile reads them): pass "
                    "audio.transpose(1, 2)"
                )
            raise InputError(
                f"audio: got {audio.shape[1]} channels ({describe(audio)}); FlexiCodec is mono: "
                f"pass mix_down=True to average the channels{hint}"
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


def fast_encode(
    audio: torch.Tensor,
    model,
    sample_rate: int = 16000,
    num_quantizers: int | None = 8,
    merging_threshold: float = 0.91,
    audio_lens: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    target_frame_rate: float | None = None,
    dither: float = 0.0,
    mix_down: bool = False,
    attention_window: float | None = None,
    options: EncodeOptions | None = None,
) -> EncodeResult:
    """Encode audio `[B, N]` at `sample_rate`; the same arguments and outputs as the official
    `encode_flexicodec` (an `EncodeResult`, the official dict; see its docstring), plus:

    num_quantizers: None (or more than the model has) uses all the model has.
    backend: "auto" (Triton on CUDA, torch paths on CPU), "triton" or "torch".
    precision: "fp32" (codes identical to the reference), "tf32" or "bf16".
    target_frame_rate: Hz; per item, the threshold giving the largest average frame rate
        (tokens per 12.5 Hz frame x 12.5) not above it is used instead of
        `merging_threshold`; the chosen values are returned as `thresholds` `[B]`.
    dither: front-end dither (0: deterministic; 1.0: the official random behaviour).
    mix_down: average the channels of `[B, C, N]` input (else multi-channel is an error).
    attention_window: seconds; approximate mode: each attention sees only this far on each
        side (linear time for long audio; codes differ from the exact model's). None: exact.
    options: an `EncodeOptions` in place of the keyword settings above (not both).

    The result also records each item's input length: `audio_lengths` `[B]` (16 kHz
    samples), `source_lengths` `[B]` and `source_sample_rate` (samples and rate as given),
    which `fast_decode(..., output_length=..., sample_rate=...)` takes back.
    """
    model = resolve_model(model)
    options = EncodeOptions.given(
        options,
        num_quantizers=num_quantizers,
        merging_threshold=merging_threshold,
        target_frame_rate=target_frame_rate,
        precision=precision,
        backend=backend,
        attention_window=attention_window,
        dither=dither,
        mix_down=mix_down,
    ).for_model(model, stacklevel=2)
    device = next(model.parameters()).device
    source_lens = _source_lengths(audio, audio_lens)
    audio, audio_lens = prepare_audio(audio, audio_lens, sample_rate, options.mix_down, device)
    lens = check_frontend_audio(audio, audio_lens)
    sizes = Sizes.of(model, lens.tolist(), audio.shape[1], static=False)
    fast = FastCodec.for_model(model, options.backend, options.precision)
    with torch.inference_mode(), fast.matmul_precision():
        out = encode_stages(fast, audio, lens, sizes, options, static=False)
    out["audio_lengths"] = lens.cpu()
    out["source_lengths"] = source_lens
    out["source_sample_rate"] = sample_rate
    return out


def _source_lengths(audio, audio_lens) -> torch.Tensor | None:
    """Per-item input lengths as given (samples at the source rate), `[B]` int64 on the host,
    or None where the input is not a tensor (prepare_audio then says what is wrong)."""
    if not isinstance(audio, torch.Tensor) or audio.dim() not in (2, 3):
        return None
    if isinstance(audio_lens, torch.Tensor):
        return audio_lens.detach().to("cpu", torch.long)
    return torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long)


# -------------------------------------------------------------------- decode stages


def dequantize(fast: FastCodec, semantic_codes, acoustic_codes, num_groups):
    """Codes -> token latents: (semantic `[B, G, latent]`, acoustic `[B, G, latent]` or
    None)."""
    sem = fast.decode_semantic(semantic_codes, num_groups).transpose(1, 2)
    if acoustic_codes is None:
        return sem, None
    r = fast.rvq
    return sem, krvq.rvq_decode(acoustic_codes, r.cb, r.out_w, r.out_b, backend=fast.backend)


def expand(fast: FastCodec, sem, ac, token_lengths, frames, t_max: int, token_window, bands):
    """Token latents -> frames `[B, t_max, latent]`, zero past each item's `frames`: repeated
    by token lengths, or (fixed windows of `token_window` frames) the window decoder."""
    if token_window is None:
        return kunmerge.unmerge(sem.contiguous(), ac, token_lengths, t_max, backend=fast.backend)
    tokens = sem if ac is None else sem + ac
    band = None if bands is None else bands.aggregator
    return fast.expand_windows(tokens, frames, t_max, token_window, band)


def decode_frames(fast: FastCodec, z, frames, frames_full: bool, bands):
    """Frames `[B, T, latent]` -> audio `[B, 1, decoded_length(T)]`: the bottleneck
    transformer and the DAC decoder. `frames_full`: every item has all T frames."""
    lengths = None if frames_full else frames
    if fast.bottleneck is not None:
        with fast.heavy():
            band = None if bands is None else bands.bottleneck
            z = fast.bottleneck(z, lengths, band).float()
    return fast.decoder(z.transpose(1, 2).float(), lengths).float()


def decode_stages(
    fast: FastCodec,
    semantic_codes,
    acoustic_codes,
    token_lengths,
    t_max,
    frames_full,
    bands,
    token_window,
    tick: Callable[[str], None] | None = None,
):
    """The decode pipeline on validated codes on the model's device; `t_max` (frames) and
    `frames_full` come from the host. `tick(name)`: as in `encode_stages`, for
    `DECODE_STAGES`."""
    tick = tick or _no_tick
    groups = torch.arange(token_lengths.shape[1], device=token_lengths.device)
    num_groups = torch.where(token_lengths > 0, groups + 1, 0).amax(dim=1)
    frames = token_lengths.sum(dim=1)
    sem, ac = dequantize(fast, semantic_codes, acoustic_codes, num_groups)
    tick("dequantize")
    z = expand(fast, sem, ac, token_lengths, frames, t_max, token_window, bands)
    tick("expand")
    audio = decode_frames(fast, z, frames, frames_full, bands)
    tick("decode_frames")
    return audio


def fast_decode(
    model,
    semantic_codes: torch.Tensor,
    acoustic_codes: torch.Tensor | None,
    token_lengths: torch.Tensor,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    attention_window: float | None = None,
    output_length=None,
    sample_rate: int = 16000,
) -> torch.Tensor:
    """Codes -> audio `[B, 1, decoded_length(T_max)]`; the same arguments and output as the
    official `decode_from_codes`. Item b's audio past its `decoded_length(T_b)` is zero.
    attention_window: seconds; approximate mode for long audio (see `fast_encode`).

    output_length: samples per item at `sample_rate` (an int, or `[B]` ints such as an
    encode's `source_lengths`): the audio is resampled from 16 kHz to `sample_rate` and each
    item cut or zero-padded to its length; the result is `[B, 1, max(output_length)]`, zero
    past each item's length. None: 16 kHz audio as decoded (`sample_rate` must be 16000).
    """
    model = resolve_model(model)
    check_backend_precision(backend, precision)
    bands = attention_bands(attention_window)
    lengths_out = _output_lengths(output_length, sample_rate, semantic_codes)
    model._check_codes(semantic_codes, acoustic_codes, token_lengths)
    device = next(model.parameters()).device
    semantic_codes, token_lengths = semantic_codes.to(device), token_lengths.to(device).long()
    if acoustic_codes is not None:
        acoustic_codes = acoustic_codes.to(device)
    # Refuse token lengths that are no fixed window's before any work (as the reference).
    token_window = variants.window_of(token_lengths) if model.fixed_window else None
    frames = token_lengths.sum(dim=1).tolist()
    fast = FastCodec.for_model(model, backend, precision)
    with torch.inference_mode(), fast.matmul_precision():
        audio = decode_stages(
            fast,
            semantic_codes,
            acoustic_codes,
            token_lengths,
            max(frames),
            len(set(frames)) == 1,
            bands,
            token_window,
        )
        if lengths_out is not None:
            audio = fit_length(
                audio, model.dac.decoded_length(torch.tensor(frames)), lengths_out, sample_rate
            )
    return audio


def _output_lengths(output_length, sample_rate, semantic_codes) -> list[int] | None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise InputError(f"sample_rate: expected a positive int (Hz), got {describe(sample_rate)}")
    if output_length is None:
        if sample_rate != 16000:
            raise InputError(
                f"sample_rate: {sample_rate} Hz needs output_length (the decoder makes 16 kHz "
                "audio; give the lengths to resample and cut it to)"
            )
        return None
    batch = semantic_codes.shape[0] if isinstance(semantic_codes, torch.Tensor) else None
    if isinstance(output_length, torch.Tensor):
        if output_length.dtype.is_floating_point or output_length.dim() > 1:
            raise InputError(
                f"output_length: expected an int or integer tensor [B], got "
                f"{describe(output_length)}"
            )
        output_length = output_length.reshape(-1).tolist()
    elif isinstance(output_length, int) and not isinstance(output_length, bool):
        output_length = [output_length] * (batch or 1)
    if (
        not isinstance(output_length, (list, tuple))
        or len(output_length) != batch
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in output_length)
    ):
        raise InputError(
            f"output_length: expected an int or {batch} non-negative ints, got "
            f"{describe(output_length)}"
        )
    return list(output_length)


def fit_length(audio, decoded, lengths: Sequence[int], sample_rate: int) -> torch.Tensor:
    """Decoded 16 kHz audio `[B, 1, N]` (item b valid up to `decoded[b]`) -> `[B, 1,
    max(lengths)]` at `sample_rate`: each item resampled alone (so its batch mates' padding
    never reaches it), then cut or zero-padded to `lengths[b]`."""
    out = audio.new_zeros(audio.shape[0], 1, max(lengths, default=0))
    for b, (n, length) in enumerate(zip(decoded.tolist(), lengths, strict=True)):
        item = audio[b, :, :n]
        if sample_rate != 16000:
            item = resample(item, 16000, sample_rate)
        keep = min(length, item.shape[-1])
        out[b, :, :keep] = item[:, :keep]
    return out
