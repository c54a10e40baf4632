"""The official FlexiCodec algorithms for the ops we fuse, re-written from spec §13 as benchmark
baselines (the official code itself is not a dependency).

Each function does what the official implementation does, with the costs spec §13 lists and
nothing else added: a dense `[B, G, T]` alignment matrix and einsum segment means (§13.4,
§13.7), host-synchronising per-item loops (§13.5), argsort interleaving (§13.6),
per-item `repeat_interleave` + `pad_sequence` de-aggregation (§13.5), unfused Snake (§13.13)
and the per-stage RVQ loop with weight norm recomputed every call (§13.11, §13.12).

Layouts are the official ones: channels-first `[B, D, T]` features and tokens `[B, D, G]`.
Every item is taken as full length (the benchmarks feed equal-length items), which is when
the official batched results are the single-item ones. tests/test_bench_smoke.py checks that
each baseline gives the reference's results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence


def official_merge(sem: torch.Tensor, ac: torch.Tensor, threshold: float, max_tokens: int):
    """Similarity merging and the mean of every group of both streams (spec §4, §5 step 1).

    sem, ac: `[B, D, T]`. Returns `(token_lengths [B, G], num_segments [B], sem_means
    [B, D, G], ac_means [B, D, G])`. The alignment `A [B, G, T]` is materialised and every
    segment reduction is an einsum over it, as officially.
    """
    h = sem.transpose(1, 2)
    batch, frames, _ = h.shape
    sim = F.cosine_similarity(h[:, :-1], h[:, 1:], dim=-1)
    run_start = torch.cat(
        [torch.ones(batch, 1, dtype=torch.bool, device=sem.device), sim <= threshold], dim=1
    )
    t = torch.arange(frames, device=sem.device).expand(batch, -1)
    start_of_run = torch.where(run_start, t, 0).cummax(dim=1).values
    starts = (t - start_of_run) % max_tokens == 0
    seg = starts.long().cumsum(dim=1) - 1
    groups = int(seg.max().item()) + 1  # the official G_max: a host synchronisation
    alignment = torch.zeros(batch, groups, frames, device=sem.device)
    alignment.scatter_(1, seg.unsqueeze(1), 1.0)
    # The official code reads each item's segment count in a Python loop (a sync per item).
    num_segments = torch.tensor(
        [int(seg[b, frames - 1].item()) + 1 for b in range(batch)], device=sem.device
    )
    token_lengths = alignment.sum(-1).long()
    counts = alignment.sum(-1, keepdim=True).clamp(min=1).transpose(1, 2)
    sem_means = torch.einsum("bgt,bdt->bdg", alignment, sem) / counts
    ac_means = torch.einsum("bgt,bdt->bdg", alignment, ac) / counts
    return token_lengths, num_segments, sem_means, ac_means


def official_interleave(
    frames: torch.Tensor, queries: torch.Tensor, token_lengths: torch.Tensor, num_segments
):
    """The aggregator's input sequence `[B, D, T + G]` and the sort order that built it
    (spec §5 step 2, §13.6).

    frames `[B, D, T]`, queries `[B, D, G]`. A frame's destination is `t` plus the number of
    groups ending before it, counted with a `[B, G, T]` comparison; query g goes to
    `end_g + g + 1`; padding gets the key `T + G`. One argsort of the keys orders the
    concatenation of frames and queries.
    """
    batch, dim, n_frames = frames.shape
    groups = queries.shape[-1]
    length = n_frames + groups
    group_end = token_lengths.cumsum(dim=1) - 1
    g = torch.arange(groups, device=frames.device)
    valid_group = g.view(1, -1) < num_segments.view(-1, 1)
    t = torch.arange(n_frames, device=frames.device)
    ends_before = ((group_end.unsqueeze(-1) < t.view(1, 1, -1)) & valid_group.unsqueeze(-1)).sum(1)
    last_frame = torch.where(valid_group, group_end, -1).amax(dim=1, keepdim=True)
    frame_key = torch.where(t.view(1, -1) <= last_frame, t + ends_before, length)
    query_key = torch.where(valid_group, group_end + g + 1, length)
    order = torch.cat([frame_key, query_key], dim=1).argsort(dim=1)
    sequence = torch.cat([frames, queries], dim=-1)
    return sequence.gather(-1, order.unsqueeze(1).expand(batch, dim, length)), order


def official_retrieve(out: torch.Tensor, order: torch.Tensor, n_frames: int, num_segments):
    """Query outputs `[B, D, G]` of an aggregator output `[B, D, T + G]`: a second argsort
    inverts the permutation to find where each query went (spec §5 step 5, §13.6)."""
    batch, dim, _ = out.shape
    position = order.argsort(dim=1)[:, n_frames:]
    groups = position.shape[1]
    tokens = out.gather(-1, position.unsqueeze(1).expand(batch, dim, groups))
    valid = torch.arange(groups, device=out.device).view(1, -1) < num_segments.view(-1, 1)
    return tokens * valid.unsqueeze(1).to(out.dtype)


def official_unmerge(sem: torch.Tensor, ac: torch.Tensor, token_lengths: torch.Tensor):
    """Decoder input `[B, D, T']`: each stream repeated per item by its token lengths
    (`repeat_interleave` in a Python loop), padded with `pad_sequence`, then summed
    (spec §1.2 step 3, §10, §13.5). sem, ac: `[B, D, G]`."""

    def expand(tokens):
        items = [
            torch.repeat_interleave(tokens[b], token_lengths[b], dim=-1).transpose(0, 1)
            for b in range(tokens.shape[0])
        ]
        return pad_sequence(items, batch_first=True).transpose(1, 2)

    return expand(ac) + expand(sem)


def official_snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DAC's Snake, one element-wise kernel per operation (spec §9, §13.13)."""
    shape = x.shape
    x = x.reshape(shape[0], shape[1], -1)
    x = x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
    return x.reshape(shape)


def _weight_norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`g * v / ||v||` over all dims but 0: the legacy weight-norm hook, run every forward."""
    return torch._weight_norm(v, g, 0)


def official_rvq_encode(residual: torch.Tensor, stages: list[dict], n_quantizers: int):
    """DAC residual VQ, one stage at a time (spec §8, §13.11).

    residual `[B, D, G]`; each stage a dict with `in_v, in_g, in_b, out_v, out_g, out_b,
    codebook` (weight-norm tensors as stored). Per stage: weight norm, 1x1 conv in,
    normalise, the full `[B*G, K]` distance matrix, argmax, raw-row lookup, the two
    per-item losses (computed officially even at inference), 1x1 conv out. Returns
    `(z_q [B, D, G], codes [B, n, G], commitment_loss [B], codebook_loss [B])`.
    """
    z_q = 0
    commitment = codebook = 0
    codes = []
    for stage in stages[:n_quantizers]:
        z_e = F.conv1d(residual, _weight_norm(stage["in_v"], stage["in_g"]), stage["in_b"])
        batch, cdim, groups = z_e.shape
        e = F.normalize(z_e.transpose(1, 2).reshape(-1, cdim))
        c = F.normalize(stage["codebook"])
        dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
        code = (-dist).max(1).indices.reshape(batch, groups)
        z_c = F.embedding(code, stage["codebook"]).transpose(1, 2)
        commitment = commitment + F.mse_loss(z_e, z_c.detach(), reduction="none").mean([1, 2])
        codebook = codebook + F.mse_loss(z_c, z_e.detach(), reduction="none").mean([1, 2])
        out = F.conv1d(
            z_e + (z_c - z_e).detach(),
            _weight_norm(stage["out_v"], stage["out_g"]),
            stage["out_b"],
        )
        z_q = z_q + out
        residual = residual - out
        codes.append(code)
    return z_q, torch.stack(codes, dim=1), commitment, codebook


def official_rvq_decode(codes: torch.Tensor, stages: list[dict]) -> torch.Tensor:
    """`sum_k out_proj_k(codebook_k[codes_k])` `[B, D, G]`, one stage at a time with weight
    norm recomputed (spec §8 `from_codes`). codes `[B, K, G]`."""
    z_q = 0.0
    for k in range(codes.shape[1]):
        stage = stages[k]
        z_c = F.embedding(codes[:, k], stage["codebook"]).transpose(1, 2)
        z_q = z_q + F.conv1d(z_c, _weight_norm(stage["out_v"], stage["out_g"]), stage["out_b"])
    return z_q


def rvq_stage_tensors(rvq) -> list[dict]:
    """The weight-norm tensors of a `reference.rvq.ResidualVectorQuantize`, per stage, in the
    layout `official_rvq_encode` takes (no folding: the official code does not fold)."""
    return [
        {
            "in_v": q.in_proj.weight_v.detach(),
            "in_g": q.in_proj.weight_g.detach(),
            "in_b": q.in_proj.bias.detach(),
            "out_v": q.out_proj.weight_v.detach(),
            "out_g": q.out_proj.weight_g.detach(),
            "out_b": q.out_proj.bias.detach(),
            "codebook": q.codebook.weight.detach(),
        }
        for q in rvq.quantizers
    ]
