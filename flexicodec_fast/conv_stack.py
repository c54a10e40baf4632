"""The DAC encoder and decoder as flat programs of folded convolutions (fast path).

Built once from the reference modules: weight norm is folded (`torch._weight_norm`, the
function the official hooks call, so the weights are bit-identical), Snake runs through the
fused op, and activations are updated in place wherever the reference allocates a fresh
tensor, so the stack touches far fewer new pages. Per-item masking (zeroing an item's
activations past its own length after every convolution) only runs when the batch has items
of different lengths, and zeroes in place; Snake maps 0 to 0, so it needs no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels.snake import snake, snake_
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
    def fold(cls, module) -> Conv:
        if not isinstance(module, (WNConv1d, WNConvTranspose1d)):
            raise TypeError(
                f"expected a weight-normalised convolution, got {type(module).__name__}"
            )
        with torch.no_grad():
            weight = module.weight().detach().clone()
        bias = None if module.bias is None else module.bias.detach()
        return cls(
            weight,
            bias,
            module.stride[0],
            module.padding[0],
            module.dilation[0],
            isinstance(module, WNConvTranspose1d),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding)
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class Masks:
    """Per-resolution masks of positions past each item's end, or nothing to mask."""

    def __init__(self, lengths: torch.Tensor | None, full: int):
        self.lengths = None if lengths is None or bool((lengths >= full).all()) else lengths

    def apply_(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is not None:
            past = torch.arange(x.shape[-1], device=x.device) >= lengths[:, None]
            x.masked_fill_(past[:, None, :], 0.0)
        return x


def _alpha(module: Snake1d) -> torch.Tensor:
    return module.alpha.detach()


class FastResidualUnit:
    def __init__(self, unit: ResidualUnit):
        snake1, conv1, snake2, conv2 = unit.block
        self.alpha1, self.alpha2 = _alpha(snake1), _alpha(snake2)
        self.conv1, self.conv2 = Conv.fold(conv1), Conv.fold(conv2)

    def __call__(self, x: torch.Tensor, lengths, masks: Masks) -> torch.Tensor:
        y = masks.apply_(self.conv1(snake(x, self.alpha1)), lengths)
        y = masks.apply_(self.conv2(snake_(y, self.alpha2)), lengths)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return y.add_(x)


class FastEncoder:
    """`[B, 1, N]` -> `[B, latent, N / hop]`, the reference `Encoder` with folded weights."""

    def __init__(self, encoder):
        first, *blocks, last_snake, last_conv = encoder.block
        self.first = Conv.fold(first)
        self.blocks = []
        for block in blocks:
            assert isinstance(block, EncoderBlock)
            *units, block_snake, down = block.block
            self.blocks.append(
                (
                    [FastResidualUnit(u) for u in units],
                    _alpha(block_snake),
                    Conv.fold(down),
                    block.stride,
                )
            )
        self.last_alpha = _alpha(last_snake)
        self.last = Conv.fold(last_conv)

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        masks = Masks(lengths, x.shape[-1])
        lengths = masks.lengths
        x = masks.apply_(self.first(masks.apply_(x.clone(), lengths)), lengths)
        for units, alpha, down, stride in self.blocks:
            for unit in units:
                x = unit(x, lengths, masks)
            x = snake_(x, alpha)
            lengths = None if lengths is None else lengths // stride
            x = masks.apply_(down(x), lengths)
        return masks.apply_(self.last(snake_(x, self.last_alpha)), lengths)


class FastDecoder:
    """`[B, latent, T]` -> `[B, 1, decoded_length(T)]`, the reference `Decoder` folded."""

    def __init__(self, decoder):
        first, *blocks, last_snake, last_conv, _tanh = decoder.model
        self.first = Conv.fold(first)
        self.blocks = []
        for block in blocks:
            assert isinstance(block, DecoderBlock)
            block_snake, up, *units = block.block
            self.blocks.append(
                (_alpha(block_snake), Conv.fold(up), [FastResidualUnit(u) for u in units], block)
            )
        self.last_alpha = _alpha(last_snake)
        self.last = Conv.fold(last_conv)

    def __call__(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        masks = Masks(lengths, z.shape[-1])
        lengths = masks.lengths
        x = masks.apply_(self.first(masks.apply_(z.clone(), lengths)), lengths)
        for alpha, up, units, block in self.blocks:
            x = snake_(x, alpha)
            lengths = None if lengths is None else block.output_length(lengths)
            x = masks.apply_(up(x), lengths)
            for unit in units:
                x = unit(x, lengths, masks)
        x = masks.apply_(self.last(snake_(x, self.last_alpha)), lengths)
        return x.tanh_()
