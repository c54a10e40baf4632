"""Dynamic frame merging (spec §4) and its inverse, de-aggregation (spec §1.2).

Adjacent 12.5 Hz frames whose semantic features are similar are merged into groups. Groups
are contiguous runs of frames, so every operation here is expressed with per-frame group ids
instead of the official dense `[B, G, T]` alignment matrix; the results are the same.

Batched inputs carry per-item lengths. Frames past an item's length belong to no group
(group id -1) and its groups are numbered `0..num_groups[b]-1`; `token_lengths` is zero past
an item's groups. This is the single-item (B = 1) official behaviour applied to every item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Segmentation:
    """Result of merging a batch of `T`-frame sequences into `G` groups at most per item.

    similarity:    `[B, T-1]` float32 adjacent cosine similarity (0 at invalid transitions)
    group_ids:     `[B, T]` int64, group of each frame, -1 past the item's length
    token_lengths: `[B, G]` int64, frames per group, 0 past the item's groups
    num_groups:    `[B]` int64, valid groups per item
    frame_lengths: `[B]` int64, valid frames per item
    """

    similarity: torch.Tensor
    group_ids: torch.Tensor
    token_lengths: torch.Tensor
    num_groups: torch.Tensor
    frame_lengths: torch.Tensor

    @property
    def max_groups(self) -> int:
        return self.token_lengths.shape[1]


def adjacent_cosine(h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of each frame with the next one.

    h: `[B, T, D]`; lengths: `[B]` or None. Returns `[B, T-1]`; transitions touching a
    frame at or past an item's length are 0, as in the official code. Each norm is clamped to
    1e-8 separately (PyTorch's formula), so a zero vector gives 0.

    The summation order of the reduction follows the memory layout: the official code passes
    the transposed view of a channels-first `[B, D, T]` tensor, and only the same layout
    reproduces its similarities bit for bit.
    """
    sim = F.cosine_similarity(h[:, :-1], h[:, 1:], dim=-1)
    if lengths is not None and sim.shape[1] > 0:
        t = torch.arange(1, h.shape[1], device=h.device)
        sim = torch.where(t.view(1, -1) < lengths.view(-1, 1), sim, torch.zeros_like(sim))
    return sim


def group_starts(
    similarity: torch.Tensor, threshold: float, max_tokens_per_group: int | None
) -> torch.Tensor:
    """Which frames start a group, `[B, T]` bool, from `[B, T-1]` similarities.

    Frame 0 starts a group; frame t+1 starts one iff `similarity[t] <= threshold`; inside a
    run of similar frames a new group is also forced every `max_tokens_per_group` frames,
    counted from the run's first frame (spec §4.4, §14.11).
    """
    batch, transitions = similarity.shape
    first = torch.ones(batch, 1, dtype=torch.bool, device=similarity.device)
    run_start = torch.cat([first, similarity <= threshold], dim=1)
    if max_tokens_per_group is None:
        return run_start
    t = torch.arange(transitions + 1, device=similarity.device).expand(batch, -1)
    start_of_run = torch.where(run_start, t, torch.zeros_like(t)).cummax(dim=1).values
    return (t - start_of_run) % max_tokens_per_group == 0


def segment(
    h: torch.Tensor,
    threshold: float,
    max_tokens_per_group: int | None = 8,
    lengths: torch.Tensor | None = None,
    max_groups: int | None = None,
) -> Segmentation:
    """Merge frames of `h` `[B, T, D]` into groups (spec §4). `lengths` `[B]` or None.
    `threshold`: a float, or per item `[B, 1]`. The group axis has `max_groups` columns
    (at least the largest count, e.g. T; a size known on the host), else the largest count."""
    batch, frames, _ = h.shape
    device = h.device
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    similarity = adjacent_cosine(h, lengths)
    starts = group_starts(similarity, threshold, max_tokens_per_group)
    valid = torch.arange(frames, device=device).view(1, -1) < lengths.view(-1, 1)
    starts = starts & valid
    group_ids = torch.where(
        valid, starts.long().cumsum(dim=1) - 1, torch.full_like(lengths.view(-1, 1), -1)
    )
    num_groups = starts.long().sum(dim=1)
    if max_groups is None:
        max_groups = int(num_groups.max()) if batch else 0
    token_lengths = torch.zeros(batch, max_groups, dtype=torch.long, device=device)
    token_lengths.scatter_add_(1, group_ids.clamp(min=0), valid.long())
    return Segmentation(similarity, group_ids, token_lengths, num_groups, lengths)


def group_means(x: torch.Tensor, group_ids: torch.Tensor, max_groups: int) -> torch.Tensor:
    """Mean of the frames of each group.

    x: `[B, T, D]`; group_ids: `[B, T]` (-1 = no group). Returns `[B, G, D]`, zero for groups
    without frames.
    """
    batch, _, dim = x.shape
    valid = (group_ids >= 0).unsqueeze(-1)
    index = group_ids.clamp(min=0).unsqueeze(-1).expand(-1, -1, dim)
    sums = torch.zeros(batch, max_groups, dim, dtype=x.dtype, device=x.device)
    sums.scatter_add_(1, index, torch.where(valid, x, torch.zeros_like(x)))
    counts = torch.zeros(batch, max_groups, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, group_ids.clamp(min=0), valid.squeeze(-1).to(x.dtype))
    return sums / counts.clamp(min=1).unsqueeze(-1)


def group_ids_from_lengths(token_lengths: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """Group id of every frame from per-group lengths.

    token_lengths: `[B, G]` non-negative. Returns `[B, T]` int64 with
    `T = frames or max_b sum_g token_lengths[b, g]`; -1 past an item's total.
    """
    ends = token_lengths.cumsum(dim=1)
    if frames is None:
        frames = int(ends[:, -1].max()) if ends.numel() else 0
    t = torch.arange(frames, device=token_lengths.device).expand(token_lengths.shape[0], -1)
    ids = torch.searchsorted(ends.contiguous(), t.contiguous(), right=True)
    total = ends[:, -1:] if ends.shape[1] else torch.zeros_like(t[:, :1])
    return torch.where(t < total, ids, torch.full_like(ids, -1))


def expand_groups(
    tokens: torch.Tensor, token_lengths: torch.Tensor, frames: int | None = None
) -> torch.Tensor:
    """Repeat each token by its group length (de-aggregation).

    tokens: `[B, G, D]`; token_lengths: `[B, G]`. Returns `[B, T, D]`, zero past an item's
    total frames.
    """
    ids = group_ids_from_lengths(token_lengths, frames)
    gathered = torch.gather(
        tokens, 1, ids.clamp(min=0).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    )
    return torch.where((ids >= 0).unsqueeze(-1), gathered, torch.zeros_like(gathered))
