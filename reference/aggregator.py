"""Query-token aggregator (spec §5): one token per group from a transformer over frames.

For each item the sequence fed to the transformer is
`[x_start0 .. x_end0, q_0, x_start1 .. x_end1, q_1, ..., q_{G-1}]`: every group's query sits
right after its last frame. Frame `t` of group `g` lands at position `t + g`; query `g` lands at
`end_g + g + 1`. The query is the group mean plus a learned embedding; the output token is the
transformer output at the query's position.

Batches are laid out with each item's `T_b + G_b` positions first and padding at the tail,
and the transformer masks per item, so an item's tokens equal its single-item tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import FULL, AttentionPattern
from .merging import Segmentation, group_means
from .transformer import ProjectedTransformer


def interleave_positions(seg: Segmentation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions in the interleaved sequence.

    Returns (frame_pos `[B, T]` (-1 past the item), query_pos `[B, G]` (-1 past the item's
    groups), sequence lengths `[B]` = `T_b + G_b`).
    """
    frame_pos = torch.where(
        seg.group_ids >= 0,
        torch.arange(seg.group_ids.shape[1], device=seg.group_ids.device) + seg.group_ids,
        torch.full_like(seg.group_ids, -1),
    )
    group_end = seg.token_lengths.cumsum(dim=1) - 1
    groups = torch.arange(seg.max_groups, device=seg.token_lengths.device)
    valid_group = groups.view(1, -1) < seg.num_groups.view(-1, 1)
    query_pos = torch.where(valid_group, group_end + groups + 1, torch.full_like(group_end, -1))
    return frame_pos, query_pos, seg.frame_lengths + seg.num_groups


def scatter_positions(sequence: torch.Tensor, values: torch.Tensor, positions: torch.Tensor):
    """`sequence[b, positions[b, i]] = values[b, i]` for positions >= 0 (in place).

    sequence: `[B, L, D]`; values: `[B, N, D]`; positions: `[B, N]`.
    """
    batch, length, dim = sequence.shape
    valid = positions >= 0
    flat = (torch.arange(batch, device=positions.device).view(-1, 1) * length + positions)[valid]
    sequence.view(batch * length, dim)[flat] = values[valid].to(sequence.dtype)


class QueryTokenAggregator(nn.Module):
    """Aggregates `[B, C, T]` frames into `[B, C, G]` group tokens.

    `dim` is the transformer width, `io_dim` the data width C (projections exist when they
    differ). Checkpoint keys: `query_embedding` `[1, C, 1]`, `transformer.*` (and
    `query_token` `[1, dim, 1]` when mean-pooling initialisation is off).
    """

    def __init__(
        self,
        dim: int,
        io_dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        pattern: AttentionPattern = FULL,
        use_mean_pooling_init: bool = True,
    ):
        super().__init__()
        self.use_mean_pooling_init = use_mean_pooling_init
        if not use_mean_pooling_init:
            self.query_token = nn.Parameter(torch.randn(1, dim, 1))
        self.query_embedding = nn.Parameter(torch.randn(1, io_dim, 1))
        self.transformer = ProjectedTransformer(
            io_dim, dim, num_heads, num_layers, dim_feedforward, pattern
        )

    def queries(self, frames: torch.Tensor, seg: Segmentation) -> torch.Tensor:
        """Initial query of every group, `[B, G, C]` (frames `[B, T, C]`)."""
        if self.use_mean_pooling_init:
            means = group_means(frames, seg.group_ids, seg.max_groups)
            return means + self.query_embedding[:, :, 0].unsqueeze(1)
        return self.query_token[:, :, 0].unsqueeze(1).expand(frames.shape[0], seg.max_groups, -1)

    def forward(self, features: torch.Tensor, seg: Segmentation) -> torch.Tensor:
        """features: `[B, C, T]` -> tokens `[B, C, G]` (zero past an item's groups)."""
        frames = features.transpose(1, 2)
        batch, num_frames, channels = frames.shape
        frame_pos, query_pos, lengths = interleave_positions(seg)
        sequence = frames.new_zeros(batch, num_frames + seg.max_groups, channels)
        scatter_positions(sequence, frames, frame_pos)
        scatter_positions(sequence, self.queries(frames, seg), query_pos)
        out = self.transformer(sequence.transpose(1, 2), lengths).transpose(1, 2)
        index = query_pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, channels)
        tokens = torch.gather(out, 1, index) * (query_pos >= 0).unsqueeze(-1).to(out.dtype)
        return tokens.transpose(1, 2)
