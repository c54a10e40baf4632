"""The DAC encoder and decoder as flat programs of folded convolutions (fast path).

Long inputs run in chunks of `CHUNK_FRAMES` frames, each with `context` frames of real signal
on both sides, where `context` covers the stack's receptive field (computed from its layers):
every kept output then sees exactly the inputs it sees in one whole-sequence pass, so memory
is bounded by the chunk size while results stay those of the whole computation.

Built once from the reference modules: weight norm is folded (`torch._weight_norm`, the
function the official hooks call, so the weights are bit-identical), Snake runs through the
fused op, and activations are updated in place wherever the reference allocates a fresh
tensor, so the stack touches far fewer new pages: each residual unit adds into its input,
and Snake's output and the pointwise convolution's land in one reused buffer per resolution
(`Workspace`), leaving the dilated convolution's output as the unit's only fresh tensor. On
CPU, pointwise convolutions run as one matrix product of the channels-last rows (bit for
bit what `conv2d` gives at the released widths, measured). Per-item masking (zeroing an
item's activations past its own length after every convolution) only runs when the batch
has items of different lengths, and zeroes in place; Snake maps 0 to 0, so it needs no mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .kernels.snake import snake_, snake_into
from .reference.dac import DecoderBlock, EncoderBlock, ResidualUnit
from .reference.snake import Snake1d
from .reference.weight_norm import WNConv1d, WNConvTranspose1d


@dataclass
class Conv:
    """A folded (transposed) convolution."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int
    padding: int
    dilation: int
    transposed: bool

    @classmethod
    def fold(cls, module, dtype: torch.dtype | None = None, channels_last: bool = False) -> Conv:
        if not isinstance(module, (WNConv1d, WNConvTranspose1d)):
            raise TypeError(
                f"expected a weight-normalised convolution, got {type(module).__name__}"
            )
        with torch.no_grad():
            weight = module.weight().detach().to(dtype=dtype, copy=True)
        if channels_last:
            weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        bias = None if module.bias is None else module.bias.detach().to(dtype)
        return cls(
            weight,
            bias,
            module.stride[0],
            module.padding[0],
            module.dilation[0],
            isinstance(module, WNConvTranspose1d),
        )

    def reach(self, resolution: float) -> tuple[float, float]:
        """(left, right) input span an output position depends on, in units where one
        position of this layer's input is `resolution`; an upper bound for transposed ones."""
        kernel = self.weight.shape[-1]
        if self.transposed:
            span = math.ceil(kernel / self.stride) * resolution
            return span, span
        return self.padding * resolution, ((kernel - 1) * self.dilation - self.padding) * resolution

    @property
    def pointwise(self) -> bool:
        return (
            self.weight.shape[-1] == 1
            and self.stride == 1
            and self.padding == 0
            and not self.transposed
        )

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x `[B, C_in, N]` -> `[B, C_out, N']`, or channels-last `[B, C, 1, N]` in and out.
        out: a channels-last buffer for the result of a pointwise convolution (allocated when
        None; other convolutions always allocate)."""
        if x.dim() == 4 and self.pointwise:
            return self._pointwise(x, out)
        if x.dim() == 4:
            if self.transposed:
                return F.conv_transpose2d(
                    x, self.weight, self.bias, (1, self.stride), (0, self.padding)
                )
            return F.conv2d(
                x, self.weight, self.bias, (1, self.stride), (0, self.padding), (1, self.dilation)
            )
        if self.transposed:
            return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding)
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def _pointwise(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """A kernel-1 convolution of channels-last `[B, C_in, 1, N]` as one matrix product of
        its rows, written into `out`: without `conv2d`'s bias-broadcast pass and fresh
        output (about 2x faster at 32-64 channels), and with the same values to fp32
        rounding (bit for bit at the released widths, measured)."""
        if out is None:
            shape = (x.shape[0], self.weight.shape[0], 1, x.shape[-1])
            out = x.new_empty(shape, memory_format=torch.channels_last)
        rows = rearrange(x, "b c 1 n -> (b n) c")
        # view, not reshape: the product must land in `out` itself, never in a copy.
        out_rows = out.permute(0, 2, 3, 1).view(-1, out.shape[1])
        matrix = rearrange(self.weight, "o i 1 1 -> i o")
        if self.bias is None:
            torch.mm(rows, matrix, out=out_rows)
        else:
            torch.addmm(self.bias, rows, matrix, out=out_rows)
        return out


class Workspace:
    """Reusable activation buffers, one per shape and layout: the stacks write Snake's
    output and pointwise convolutions into them instead of fresh tensors, because on CPU a
    fresh large tensor costs a page fault per 4 KiB on first write."""

    def __init__(self):
        self.buffers: dict = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape, x.stride(), x.dtype, x.device)
        if key not in self.buffers:
            self.buffers[key] = torch.empty_like(x)
        return self.buffers[key]


class Masks:
    """Per-resolution masks of positions past each item's end, or nothing to mask (lengths
    None: the caller knows on the host that every item fills the input)."""

    def __init__(self, lengths: torch.Tensor | None):
        self.lengths = lengths

    def apply_(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is not None:
            past = torch.arange(x.shape[-1], device=x.device) >= lengths[:, None]
            x.masked_fill_(past.view(x.shape[0], *([1] * (x.dim() - 2)), -1), 0.0)
        return x


def _alpha(module: Snake1d, dtype: torch.dtype | None) -> torch.Tensor:
    return module.alpha.detach().to(dtype)


CHUNK_FRAMES = 512


def _receptive_frames(convs: list[tuple[Conv, float]], frame: float) -> int:
    """Frames of context that cover the receptive field of `(conv, input resolution)` pairs,
    with the resolution in the same units as `frame` (the span of one frame)."""
    left = right = 0.0
    for conv, resolution in convs:
        a, b = conv.reach(resolution)
        left, right = left + a, right + b
    return math.ceil(max(left, right) / frame) + 1


def _run_chunked(
    run,
    x: torch.Tensor,
    lengths,
    in_per_frame: int,
    out_per_frame: int,
    out_length: int,
    context: int,
) -> torch.Tensor:
    """Apply `run(x_chunk, lengths_chunk)` to chunks of `CHUNK_FRAMES` frames with `context`
    frames either side, keeping each chunk's own frames. Frame f covers input positions
    `[f * in_per_frame, ...)` and output positions `[f * out_per_frame, ...)`; the last chunk
    keeps everything up to `out_length`."""
    frames = math.ceil(x.shape[-1] / in_per_frame)
    if frames <= CHUNK_FRAMES + 2 * context:
        return run(x, lengths)
    out, filled = None, 0
    for start in range(0, frames, CHUNK_FRAMES):
        end = min(frames, start + CHUNK_FRAMES)
        a, b = max(0, start - context), min(frames, end + context)
        piece_lengths = None
        if lengths is not None:
            piece_lengths = (lengths - a * in_per_frame).clamp(0, (b - a) * in_per_frame)
        y = run(x[..., a * in_per_frame : b * in_per_frame], piece_lengths)
        keep_to = (end - a) * out_per_frame if end < frames else y.shape[-1]
        piece = y[..., (start - a) * out_per_frame : keep_to][..., : out_length - filled]
        if out is None:
            # Pieces go straight into the output: no list of pieces plus a concatenated copy.
            out = y.new_empty(*y.shape[:-1], out_length)
        out[..., filled : filled + piece.shape[-1]] = piece
        filled += piece.shape[-1]
    return out[..., :filled]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, N]` view of `[B, C, N]` or channels-last `[B, C, 1, N]` activations."""
    return x.squeeze(2) if x.dim() == 4 else x


def _snake_into(x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Snake of `[B, C, N]` or channels-last `[B, C, 1, N]` activations into `out`."""
    snake_into(_flat(x), alpha, _flat(out))
    return out


def _snake_(x: torch.Tensor, alpha: torch.Tensor, work: Workspace) -> torch.Tensor:
    """In-place Snake of `[B, C, N]` or channels-last `[B, C, 1, N]` activations."""
    snake_(_flat(x), alpha, scratch=_flat(work.like(x)))
    return x


def _enter(x: torch.Tensor, dtype, channels_last: bool) -> torch.Tensor:
    """A private copy of the stack's input `[B, C, N]` in the stack's dtype and layout."""
    x = x.to(dtype, copy=True)
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last) if channels_last else x


def _leave(x: torch.Tensor) -> torch.Tensor:
    return x.squeeze(2).contiguous() if x.dim() == 4 else x


class FastResidualUnit:
    def __init__(self, unit: ResidualUnit, dtype: torch.dtype | None, channels_last: bool):
        snake1, conv1, snake2, conv2 = unit.block
        self.alpha1, self.alpha2 = _alpha(snake1, dtype), _alpha(snake2, dtype)
        self.conv1 = Conv.fold(conv1, dtype, channels_last)
        self.conv2 = Conv.fold(conv2, dtype, channels_last)

    def __call__(self, x: torch.Tensor, lengths, masks: Masks, work: Workspace) -> torch.Tensor:
        """x: an activation of the stack's own, which receives the residual in place when
        the unit keeps the length (DAC's units do)."""
        scratch = work.like(x)
        y = masks.apply_(self.conv1(_snake_into(x, self.alpha1, scratch)), lengths)
        y = _snake_(y, self.alpha2, work)
        if y.shape != x.shape or y.stride() != x.stride():
            y = masks.apply_(self.conv2(y), lengths)
            crop = (x.shape[-1] - y.shape[-1]) // 2
            return y.add_(x[..., crop:-crop] if crop else x)
        # The reference adds x to the unit's output; x + y is the same sum.
        return x.add_(masks.apply_(self.conv2(y, out=work.like(y)), lengths))


class EncoderLevel(NamedTuple):
    """One DAC encoder block, fields in the order it computes: residual units, Snake, the
    strided convolution down by `stride`."""

    units: list[FastResidualUnit]
    alpha: torch.Tensor
    down: Conv
    stride: int


class DecoderLevel(NamedTuple):
    """One DAC decoder block, fields in the order it computes: Snake, the transposed
    convolution up (its `block` gives the output length), residual units."""

    alpha: torch.Tensor
    up: Conv
    block: DecoderBlock
    units: list[FastResidualUnit]


class FastEncoder:
    """`[B, 1, N]` -> `[B, latent, N / hop]`, the reference `Encoder` with folded weights
    (cast to `dtype`, e.g. bf16, when given: the stack then computes in that dtype).

    `channels_last` keeps activations as channels-last `[B, C, 1, N]` and convolves them with
    2-D kernels: oneDNN then works in the tensors' own layout, where `conv1d` reorders every
    input and output (2-4x slower on CPU for the DAC's long, narrow layers). Results agree
    with `conv1d` to fp32 rounding, not bit for bit (another summation order).
    """

    def __init__(self, encoder, dtype: torch.dtype | None = None, channels_last: bool = False):
        self.dtype = dtype
        self.channels_last = channels_last
        first, *blocks, last_snake, last_conv = encoder.block
        self.first = Conv.fold(first, dtype, channels_last)
        self.blocks = []
        for block in blocks:
            assert isinstance(block, EncoderBlock)
            *units, block_snake, down = block.block
            self.blocks.append(
                EncoderLevel(
                    [FastResidualUnit(u, dtype, channels_last) for u in units],
                    _alpha(block_snake, dtype),
                    Conv.fold(down, dtype, channels_last),
                    block.stride,
                )
            )
        self.last_alpha = _alpha(last_snake, dtype)
        self.last = Conv.fold(last_conv, dtype, channels_last)
        self.hop = math.prod(level.stride for level in self.blocks)
        convs, resolution = [(self.first, 1)], 1
        for level in self.blocks:
            convs += [(c, resolution) for u in level.units for c in (u.conv1, u.conv2)]
            convs.append((level.down, resolution))
            resolution *= level.stride
        convs.append((self.last, resolution))
        self.context = _receptive_frames(convs, self.hop)

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x `[B, 1, N]`, N a multiple of the hop; lengths `[B]` samples (multiples of the hop)."""
        return _run_chunked(
            self._run, x, lengths, self.hop, 1, x.shape[-1] // self.hop, self.context
        )

    def _run(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        masks = Masks(lengths)
        lengths = masks.lengths
        x = masks.apply_(_enter(x, self.dtype, self.channels_last), lengths)
        x = masks.apply_(self.first(x), lengths)
        if self.channels_last:
            # From a one-channel input oneDNN returns the usual layout; the units update
            # their input in place only when it is in their own (channels-last) layout.
            x = x.contiguous(memory_format=torch.channels_last)
        for level in self.blocks:
            # One workspace per resolution: the buffers of finished levels are freed.
            work = Workspace()
            for unit in level.units:
                x = unit(x, lengths, masks, work)
            x = _snake_(x, level.alpha, work)
            lengths = None if lengths is None else lengths // level.stride
            x = masks.apply_(level.down(x), lengths)
        x = _snake_(x, self.last_alpha, Workspace())
        return _leave(masks.apply_(self.last(x), lengths))


class FastDecoder:
    """`[B, latent, T]` -> `[B, 1, decoded_length(T)]`, the reference `Decoder` folded
    (cast to `dtype` when given; `channels_last` as for `FastEncoder`)."""

    def __init__(self, decoder, dtype: torch.dtype | None = None, channels_last: bool = False):
        self.dtype = dtype
        self.channels_last = channels_last
        first, *blocks, last_snake, last_conv, _tanh = decoder.model
        self.first = Conv.fold(first, dtype, channels_last)
        self.blocks = []
        for block in blocks:
            assert isinstance(block, DecoderBlock)
            block_snake, up, *units = block.block
            self.blocks.append(
                DecoderLevel(
                    _alpha(block_snake, dtype),
                    Conv.fold(up, dtype, channels_last),
                    block,
                    [FastResidualUnit(u, dtype, channels_last) for u in units],
                )
            )
        self.last_alpha = _alpha(last_snake, dtype)
        self.last = Conv.fold(last_conv, dtype, channels_last)
        self.hop = math.prod(level.block.stride for level in self.blocks)
        convs, resolution = [(self.first, 1.0)], 1.0
        for level in self.blocks:
            convs.append((level.up, resolution))
            resolution /= level.block.stride
            convs += [(c, resolution) for u in level.units for c in (u.conv1, u.conv2)]
        convs.append((self.last, resolution))
        self.context = _receptive_frames(convs, 1.0)
        self.output_length = decoder.output_length

    def __call__(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """z `[B, latent, T]`; lengths `[B]` frames. Returns `[B, 1, output_length(T)]`."""
        out_length = self.output_length(z.shape[-1])
        return _run_chunked(self._run, z, lengths, 1, self.hop, out_length, self.context)

    def _run(self, z: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        masks = Masks(lengths)
        lengths = masks.lengths
        x = masks.apply_(_enter(z, self.dtype, self.channels_last), lengths)
        x = masks.apply_(self.first(x), lengths)
        work = Workspace()
        for level in self.blocks:
            x = _snake_(x, level.alpha, work)
            lengths = None if lengths is None else level.block.output_length(lengths)
            x = masks.apply_(level.up(x), lengths)
            # One workspace per resolution: the buffers of finished levels are freed.
            work = Workspace()
            for unit in level.units:
                x = unit(x, lengths, masks, work)
        x = masks.apply_(self.last(_snake_(x, self.last_alpha, work)), lengths)
        return _leave(x.tanh_())
