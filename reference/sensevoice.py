"""SenseVoiceSmall's SANM encoder as FlexiCodec uses it (spec §2.2-2.3).

Only the part FlexiCodec reads is built: the prompt embedding, `encoders0`, `encoders` and
`after_norm`. The `tp_encoders`, `tp_norm` and CTC head of SenseVoiceSmall are not, so a
SenseVoiceSmall state dict loads after dropping those keys (see `SENSEVOICE_UNUSED_PREFIXES`).

Operations follow the official code's order where it changes rounding (scale q before q·kᵀ,
mask, softmax, FSMN residual inside the memory, no residual around the 560 -> 512 block), so
with one unpadded item the output equals the official one to fp32 rounding.

Unlike the official code, padding is masked per item (key mask in attention, FSMN input and
output masked by the item's length): an item's valid rows do not depend on its batch mates.
"""

from __future__ import annotations

import math
import re

import torch
from einops import rearrange
from torch import nn

from .config import SenseVoiceConfig
from .errors import CheckpointError, InputError, describe

# Prompt rows of `embed` prepended to the features: language "auto", event, emotion, and
# text normalisation "woitn" (spec §2.2).
PROMPT_ROWS = (0, 1, 2, 15)
# State-dict keys of SenseVoiceSmall that FlexiCodec never runs.
SENSEVOICE_UNUSED_PREFIXES = ("encoder.tp_encoders.", "encoder.tp_norm.", "ctc.")
# SenseVoice's LayerNorm (spec §2.3; matches the official fixture, see tests/test_sensevoice.py).
LAYER_NORM_EPS = 1e-5


def sinusoidal_position_encoding(length: int, dim: int, device=None) -> torch.Tensor:
    """Position encoding `[1, length, dim]` float32 for positions 1..length.

    Sines in the first `dim / 2` channels, cosines in the rest; frequencies
    `exp(-i ln(10000) / (dim/2 - 1))`. Computed with the official float32 operations.
    """
    positions = torch.arange(1, length + 1, device=device, dtype=torch.float32)
    # Filled on the device, not copied from the host: the same float32 value, and nothing a
    # CUDA graph capture would refuse.
    increment = torch.full((1,), 10000.0, device=device).log() / (dim / 2 - 1)
    inv_timescales = torch.exp(
        torch.arange(dim // 2, device=device, dtype=torch.float32) * -increment
    )
    angles = positions[None, :, None] * inv_timescales[None, None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=2)


class SANMAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory on the values (`MultiHeadedAttentionSANM`).

    `[B, L, in_dim]` -> `[B, L, dim]`: `linear_out(softmax(q kᵀ / sqrt(d_k)) v) + fsmn(v)`.
    """

    def __init__(self, in_dim: int, dim: int, heads: int, kernel_size: int, shift: int = 0):
        super().__init__()
        if dim % heads:
            raise CheckpointError(
                f"sensevoice config: output_size {dim} is not divisible by {heads} heads"
            )
        self.heads = heads
        self.linear_q_k_v = nn.Linear(in_dim, 3 * dim)
        self.linear_out = nn.Linear(dim, dim)
        self.fsmn_block = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        left = (kernel_size - 1) // 2 + shift
        self.fsmn_padding = (left, kernel_size - 1 - left)

    def fsmn(self, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Depthwise conv over time plus the input itself, `[B, L, D]` -> `[B, L, D]`.

        Masking the input keeps padding out of the valid rows' receptive field; masking the
        output keeps the memory of padding rows at zero.
        """
        if mask is not None:
            v = v * mask[..., None]
        x = nn.functional.pad(rearrange(v, "b l d -> b d l"), self.fsmn_padding)
        memory = rearrange(self.fsmn_block(x), "b d l -> b l d") + v
        if mask is not None:
            memory = memory * mask[..., None]
        return memory

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x `[B, L, in_dim]`, mask `[B, L]` float (1 = valid) or None (all valid)."""
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)
        memory = self.fsmn(v, mask)
        q, k, vh = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in (q, k, v))
        scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-2, -1))
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, None, :] == 0, -math.inf)
        attn = torch.matmul(torch.softmax(scores, dim=-1), vh)
        return self.linear_out(rearrange(attn, "b h l d -> b l (h d)")) + memory


class FeedForward(nn.Module):
    """`w_2(relu(w_1(x)))`, `[B, L, dim]` -> `[B, L, dim]`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SANMBlock(nn.Module):
    """Pre-norm SANM encoder layer (`EncoderLayerSANM`), `[B, L, in_dim]` -> `[B, L, dim]`.

    The attention residual exists only when `in_dim == dim` (not for the first, 560 -> 512,
    block).
    """

    def __init__(
        self, in_dim: int, dim: int, heads: int, hidden: int, kernel_size: int, shift: int
    ):
        super().__init__()
        self.self_attn = SANMAttention(in_dim, dim, heads, kernel_size, shift)
        self.feed_forward = FeedForward(dim, hidden)
        self.norm1 = nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.residual = in_dim == dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn = self.self_attn(self.norm1(x), mask)
        x = x + attn if self.residual else attn
        return x + self.feed_forward(self.norm2(x))


class SANMEncoder(nn.Module):
    """`encoders0` (one block, input_size -> output_size), `encoders`, `after_norm`."""

    def __init__(self, cfg: SenseVoiceConfig):
        super().__init__()
        args = (cfg.attention_heads, cfg.linear_units, cfg.kernel_size, cfg.sanm_shfit)
        self.encoders0 = nn.ModuleList([SANMBlock(cfg.input_size, cfg.output_size, *args)])
        self.encoders = nn.ModuleList(
            SANMBlock(cfg.output_size, cfg.output_size, *args) for _ in range(cfg.num_blocks - 1)
        )
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x `[B, L, input_size]` (scaled and position-encoded) -> `[B, L, output_size]`."""
        for block in [*self.encoders0, *self.encoders]:
            x = block(x, mask)
        return self.after_norm(x)


class SenseVoiceEncoder(nn.Module):
    """SenseVoice semantic features: LFR features `[B, Tl, 560]` -> `[B, Tl, 512]` (16.67 Hz).

    The four prompt embeddings are prepended (lengths + 4), the sequence is scaled by
    `sqrt(output_size)` and position-encoded, run through the SANM blocks and `after_norm`,
    and the prompt positions are dropped again.
    """

    def __init__(self, cfg: SenseVoiceConfig | None = None):
        super().__init__()
        cfg = cfg or SenseVoiceConfig()
        if cfg.num_embeddings <= max(PROMPT_ROWS) or cfg.num_blocks < 1:
            raise CheckpointError(
                f"sensevoice config: need num_embeddings > {max(PROMPT_ROWS)} and num_blocks >= 1, "
                f"got {cfg.num_embeddings} and {cfg.num_blocks}"
            )
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.num_embeddings, cfg.input_size)
        self.encoder = SANMEncoder(cfg)

    def _check(self, feats, feat_lens) -> torch.Tensor | None:
        """Validate; returns lengths `[B]` int64, or None when every item fills `feats`."""
        if (
            not isinstance(feats, torch.Tensor)
            or feats.dim() != 3
            or feats.shape[-1] != self.cfg.input_size
            or feats.dtype != torch.float32
            or feats.shape[0] == 0
            or feats.shape[1] == 0
        ):
            raise InputError(
                f"feats: expected a float32 tensor [B, Tl, {self.cfg.input_size}] with B, Tl >= 1, "
                f"got {describe(feats)}"
            )
        if feat_lens is None:
            return None
        batch, length = feats.shape[:2]
        if (
            not isinstance(feat_lens, torch.Tensor)
            or feat_lens.shape != (batch,)
            or feat_lens.dtype.is_floating_point
            or feat_lens.dtype.is_complex
            or feat_lens.dtype == torch.bool
        ):
            raise InputError(
                f"feat_lens: expected an integer tensor of shape [{batch}], "
                f"got {describe(feat_lens)}"
            )
        lens = feat_lens.to(device=feats.device, dtype=torch.int64)
        if int(lens.min()) < 1 or int(lens.max()) > length:
            raise InputError(
                f"feat_lens: expected every length in [1, {length}], got {lens.tolist()}"
            )
        return None if bool((lens == length).all()) else lens

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None) -> torch.Tensor:
        """feats `[B, Tl, input_size]` float32, feat_lens `[B]` int64 or None (all Tl).

        Returns `[B, Tl, output_size]`; rows at or past an item's length are 0.
        """
        lens = self._check(feats, feat_lens)
        batch, length = feats.shape[:2]
        n_prompt = len(PROMPT_ROWS)
        prompt = self.embed.weight[list(PROMPT_ROWS)].expand(batch, -1, -1)
        x = torch.cat([prompt, feats], dim=1) * self.cfg.output_size**0.5
        x = x + sinusoidal_position_encoding(n_prompt + length, self.cfg.input_size, x.device)

        mask = None
        if lens is not None:
            positions = torch.arange(n_prompt + length, device=feats.device)
            mask = (positions[None, :] < (lens + n_prompt)[:, None]).to(x.dtype)
        out = self.encoder(x, mask)[:, n_prompt:]
        if mask is not None:
            out = out * mask[:, n_prompt:, None]
        return out


def sensevoice_config_from_state_dict(
    state_dict: dict[str, torch.Tensor], heads: int = 4, prefix: str = ""
) -> SenseVoiceConfig:
    """Infer the SenseVoice encoder config from its weights' shapes.

    Keys are read as `prefix + "embed.weight"` etc. (use `prefix="semantic_model."` on a
    FlexiCodec state dict). The number of heads is not visible in the weights: 4 is
    SenseVoiceSmall's. `sanm_shfit` is not either; it is 0 in every released model.
    """

    def get(key: str) -> torch.Tensor:
        if prefix + key not in state_dict:
            raise CheckpointError(f"state dict: missing SenseVoice key {prefix + key!r}")
        return state_dict[prefix + key]

    embed = get("embed.weight")
    first = "encoder.encoders0.0."
    pattern = re.compile(re.escape(prefix) + r"encoder\.encoders\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise CheckpointError(
            f"state dict: SenseVoice blocks {prefix}encoder.encoders.* are not numbered 0..n-1: "
            f"{sorted(indices)}"
        )
    if embed.dim() != 2:
        raise CheckpointError(
            f"state dict: {prefix}embed.weight: expected 2-D, got {describe(embed)}"
        )
    return SenseVoiceConfig(
        input_size=int(embed.shape[1]),
        output_size=int(get("encoder.after_norm.weight").shape[0]),
        attention_heads=heads,
        linear_units=int(get(first + "feed_forward.w_1.weight").shape[0]),
        num_blocks=1 + len(indices),
        kernel_size=int(get(first + "self_attn.fsmn_block.weight").shape[-1]),
        num_embeddings=int(embed.shape[0]),
    )
