"""DAC convolutional encoder and decoder (spec §9), with the acoustic RVQ beside them.

Module paths reproduce the official state-dict keys under the `dac.` prefix of FlexiCodec:
`encoder.block.{i}`, `decoder.model.{i}`, `quantizer.quantizers.{k}`; inside them
`ResidualUnit.block.{0..3}`, `EncoderBlock.block.{0..4}`, `DecoderBlock.block.{0..4}`, Snake
parameters `alpha`.

Per-item lengths. Every module takes optional `lengths` `[B]` (int64, in steps of its own
input) and then zeroes each item's activations past its own length after every layer. A
single-item run pads every convolution input with zeros past the item's end; with the mask
a batched item sees exactly the same zeros there instead of its batch mates' padding (which
after the first layer is no longer zero: it holds the biases and whatever they become). So
each item's valid outputs are the ones a batch of one computes, and past its end it is zero.
Without `lengths` nothing is masked, as in the official code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import InputError, describe
from .rvq import ResidualVectorQuantize
from .snake import Snake1d
from .weight_norm import WNConv1d, WNConvTranspose1d


def _zero_beyond(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero `x [B, C, N]` at positions `n >= lengths[b]`; identity when `lengths` is None."""
    if lengths is None:
        return x
    keep = torch.arange(x.shape[-1], device=x.device) < lengths[:, None]
    return x.masked_fill(~keep[:, None, :], 0.0)


class ResidualUnit(nn.Module):
    """`x + conv1x1(snake(conv_k7_dil_d(snake(x))))` on `[B, C, N]` (length-preserving)."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = _zero_beyond(layer(y), lengths)
        # The official unit centre-crops the skip path when the branch is shorter; with the
        # padding above it never is, but the rule is part of the architecture.
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return x + y


class EncoderBlock(nn.Module):
    """Three residual units at `dim/2` channels, Snake, then a strided conv to `dim`:
    `[B, dim/2, N]` -> `[B, dim, N/stride]` (N a multiple of `stride`)."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, dilation=1),
            ResidualUnit(dim // 2, dilation=3),
            ResidualUnit(dim // 2, dilation=9),
            Snake1d(dim // 2),
            WNConv1d(
                dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
        )

    def output_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        return None if lengths is None else lengths // self.stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        *units, snake, down = self.block
        for unit in units:
            x = unit(x, lengths)
        x = _zero_beyond(snake(x), lengths)
        return _zero_beyond(down(x), self.output_lengths(lengths))


class Encoder(nn.Module):
    """`[B, 1, N]` -> `[B, d_latent, N / prod(strides)]`, N a multiple of `prod(strides)`."""

    def __init__(self, d_model: int, strides: list[int], d_latent: int):
        super().__init__()
        layers = [WNConv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride))
        layers += [Snake1d(d_model), WNConv1d(d_model, d_latent, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` `[B]`: samples per item, multiples of `prod(strides)` (or None)."""
        x = _zero_beyond(x, lengths)
        for layer in self.block:
            if isinstance(layer, EncoderBlock):
                x = layer(x, lengths)
                lengths = layer.output_lengths(lengths)
            else:
                x = _zero_beyond(layer(x), lengths)
        return x


class DecoderBlock(nn.Module):
    """Snake, transposed conv up by `stride`, three residual units:
    `[B, I, L]` -> `[B, O, L*stride - stride % 2]`."""

    def __init__(self, input_dim: int, output_dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.block = nn.Sequential(
            Snake1d(input_dim),
            WNConvTranspose1d(
                input_dim,
                output_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
            ResidualUnit(output_dim, dilation=1),
            ResidualUnit(output_dim, dilation=3),
            ResidualUnit(output_dim, dilation=9),
        )

    def output_length(self, length):
        """`(L-1)s - 2 ceil(s/2) + 2s = L s - (s mod 2)` (int or tensor)."""
        return length * self.stride - self.stride % 2

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        snake, up, *units = self.block
        x = _zero_beyond(snake(x), lengths)
        lengths = None if lengths is None else self.output_length(lengths)
        x = _zero_beyond(up(x), lengths)
        for unit in units:
            x = unit(x, lengths)
        return x


class Decoder(nn.Module):
    """`[B, input_channel, T]` -> `[B, d_out, output_length(T)]`, tanh-bounded."""

    def __init__(self, input_channel: int, channels: int, rates: list[int], d_out: int = 1):
        super().__init__()
        layers = [WNConv1d(input_channel, channels, kernel_size=7, padding=3)]
        for i, stride in enumerate(rates):
            layers.append(DecoderBlock(channels // 2**i, channels // 2 ** (i + 1), stride))
        output_dim = channels // 2 ** len(rates)
        layers += [
            Snake1d(output_dim),
            WNConv1d(output_dim, d_out, kernel_size=7, padding=3),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def output_length(self, num_frames):
        """Samples decoded from `num_frames` frames (int or tensor): each rate `s` maps
        `L -> L s - (s mod 2)`; the convolutions around them keep the length. For the
        released rates [2, 8, 5, 4, 4] this is `1280 T - 16`."""
        for layer in self.model:
            if isinstance(layer, DecoderBlock):
                num_frames = layer.output_length(num_frames)
        return num_frames

    def forward(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` `[B]`: valid frames per item (or None)."""
        z = _zero_beyond(z, lengths)
        for layer in self.model:
            if isinstance(layer, DecoderBlock):
                z = layer(z, lengths)
                lengths = layer.output_length(lengths) if lengths is not None else None
            else:
                z = _zero_beyond(layer(z), lengths)
        return z


class DAC(nn.Module):
    """The DAC part of FlexiCodec: `encoder`, `quantizer` (acoustic RVQ) and `decoder`.

    Hop `prod(encoder_rates)` samples per frame (1280 for the released model). The official
    initialisation is reproduced: biases of the (weight-normalised) `Conv1d`s start at zero,
    transposed convolutions keep PyTorch's default (spec §11.6).
    """

    def __init__(
        self,
        encoder_dim: int = 64,
        encoder_rates: list[int] = (2, 4, 8, 8),
        latent_dim: int | None = None,
        decoder_dim: int = 1536,
        decoder_rates: list[int] = (8, 8, 4, 2),
        n_codebooks: int = 9,
        codebook_size: int = 1024,
        codebook_dim: int | list[int] = 8,
        quantizer_dropout: float = 0.0,
    ):
        super().__init__()
        if latent_dim is None:
            latent_dim = encoder_dim * 2 ** len(encoder_rates)
        self.latent_dim = latent_dim
        self.hop_length = math.prod(encoder_rates)
        self.encoder = Encoder(encoder_dim, list(encoder_rates), latent_dim)
        self.quantizer = ResidualVectorQuantize(
            latent_dim, n_codebooks, codebook_size, codebook_dim, quantizer_dropout
        )
        self.decoder = Decoder(latent_dim, decoder_dim, list(decoder_rates))
        for module in self.modules():
            if isinstance(module, WNConv1d):
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg) -> DAC:
        """Build from a `FlexiCodecConfig`."""
        return cls(
            cfg.encoder_dim,
            cfg.encoder_rates,
            cfg.latent_dim,
            cfg.decoder_dim,
            cfg.decoder_rates,
            cfg.n_codebooks,
            cfg.codebook_size,
            cfg.codebook_dim,
            cfg.quantizer_dropout,
        )

    def num_frames(self, num_samples):
        """Latent frames of `num_samples` samples: `ceil(N / hop)` (int or int tensor)."""
        return -(-num_samples // self.hop_length)

    def decoded_length(self, num_frames):
        """Samples the decoder makes from `num_frames` frames (1280 T - 16 when released)."""
        return self.decoder.output_length(num_frames)

    def encode_audio(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`audio [B, 1, N]` -> latents `[B, latent_dim, ceil(N / hop)]`.

        The audio is right-padded with zeros to a multiple of the hop (official
        `preprocess`). With `audio_lens` `[B]`, item `b` is encoded as if it were alone and
        `audio_lens[b]` samples long: its first `ceil(audio_lens[b] / hop)` frames equal the
        batch-of-one result and the frames after them are zero.
        """
        if audio.dim() != 3 or audio.shape[1] != 1 or not audio.dtype.is_floating_point:
            raise InputError(f"audio: expected a float tensor [B, 1, N], got {describe(audio)}")
        batch, _, length = audio.shape
        if length == 0:
            raise InputError(f"audio: expected at least one sample, got {describe(audio)}")
        padded = self.num_frames(length) * self.hop_length
        audio = nn.functional.pad(audio, (0, padded - length))
        lengths = None
        if audio_lens is not None:
            lengths = self._check_lengths(audio_lens, batch, length, "audio_lens").to(audio.device)
            audio = _zero_beyond(audio, lengths)
            lengths = self.num_frames(lengths) * self.hop_length
            if bool((lengths == padded).all()):
                lengths = None  # nothing to mask: skip the per-layer masks
        return self.encoder(audio, lengths)

    def decode_latent(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`z [B, latent_dim, T]` -> audio `[B, 1, decoded_length(T)]` in [-1, 1].

        With `lengths` `[B]` (valid frames per item) item `b`'s first
        `decoded_length(lengths[b])` samples equal its batch-of-one result; the rest is zero.
        """
        if z.dim() != 3 or z.shape[1] != self.latent_dim or z.shape[2] == 0:
            raise InputError(f"z: expected a tensor [B, {self.latent_dim}, T>0], got {describe(z)}")
        if lengths is not None:
            lengths = self._check_lengths(lengths, z.shape[0], z.shape[2], "lengths").to(z.device)
            if bool((lengths == z.shape[2]).all()):
                lengths = None
        return self.decoder(z, lengths)

    @staticmethod
    def _check_lengths(lengths, batch: int, limit: int, name: str) -> torch.Tensor:
        if (
            not isinstance(lengths, torch.Tensor)
            or lengths.shape != (batch,)
            or lengths.dtype.is_floating_point
            or lengths.dtype.is_complex
            or lengths.dtype == torch.bool
        ):
            raise InputError(
                f"{name}: expected an integer tensor of shape [{batch}], got {describe(lengths)}"
            )
        if batch and (int(lengths.min()) < 1 or int(lengths.max()) > limit):
            raise InputError(f"{name}: expected values in [1, {limit}], got {lengths.tolist()}")
        return lengths.long()
