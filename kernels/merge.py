"""Dynamic frame merging: similarity, boundaries, group ids, token lengths, group means
(spec §4, design §3).

    s[b, t]  = sum_d (h[b,t,d] / max(|h[b,t]|, 1e-8)) * (h[b,t+1,d] / max(|h[b,t+1]|, 1e-8))
               for t < T-1, computed in fp32; 0 where t+1 >= len[b]
    start[t] = t == 0  or  s[t-1] <= threshold                 (a similarity run starts)
    group    : inside a run starting at r, frame t starts a group iff (t - r) % M == 0
               (M = max_tokens_per_group; M <= 0 or None: only run starts)
    gid[b,t] = (group starts in 0..t) - 1, and -1 for t >= len[b]
    mean[b,g] = (sum of the frames of group g, in frame order) / count

Three launches, chosen so that every phase that touches `[B, T, D]` data is fully parallel
and only the inherently sequential part runs per item, on 4 bytes a frame:

1. `_adjacent_cosine_kernel`, grid (T-blocks, B): `s [B, T-1]` fp32.
2. `_segment_scan_kernel`, grid (B,): one program per item walks its frames in blocks,
   carrying the last run start and the number of groups so far across blocks. Within a block
   the run start of each frame is a max-scan, the group starts follow in closed form
   (`group_start = r + ((t - r) // M) * M`), group ids are a cumulative sum, and each group's
   length and first frame are written at its last frame. Reads `s`, writes ids, lengths,
   first frames and the count; T = 45 000 frames is ~44 iterations of 1024 frames.
3. `_group_means_kernel`, grid (G-blocks, B, D-blocks), once per feature stream: each program
   owns `BLOCK_G` groups and adds their frames one frame index at a time (group lengths are
   at most M = 8 in the released model), in frame order, in fp32.

Outputs are sized for the worst case G = T (no host synchronisation): `token_lengths`,
`group_starts` and the means have T rows per item, zero past the item's groups. The caller
slices to `num_groups.max()` when it wants the official `[B, G_max]` shapes.

Numerics: the torch path is the reference's own expressions (bit-identical to
`reference.merging`). The Triton similarity reduces in a different order, so a similarity
within ~1e-6 of the threshold may fall on the other side (design §4); everything downstream
of the boundaries is exact. Means add frames in the reference's order (`scatter_add_` adds
them one by one) and divide with a correctly rounded division, so they are bit-identical
to the reference in fp32 given equal group ids. Half-precision streams are averaged in fp32
and rounded once.

Layout: `h`, streams `[B, T, D]` with a contiguous last dimension (any batch/time strides),
`lengths [B]` int64 (clamped to [0, T]); group ids, token lengths, group starts `[B, T]`
int64, `num_groups [B]` int64, means `[B, T, D]` in the stream's dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

COSINE_BLOCK_T = 32
COSINE_BLOCK_D = 64
SCAN_BLOCK_T = 1024
MEANS_BLOCK_G = 16
MEANS_BLOCK_D = 128
NUM_WARPS = 4


@triton.jit
def _adjacent_cosine_kernel(
    h_ptr,
    len_ptr,
    sim_ptr,
    stride_hb,
    stride_ht,
    stride_sb,
    T,
    D,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Cosine similarity of `BLOCK_T` adjacent frame pairs `(t, t+1)` of item `b`.

    h `[B, T, D]` (last dim contiguous, any float dtype, computed in fp32), len `[B]` int64,
    sim `[B, T-1]` fp32. Grid `(cdiv(T-1, BLOCK_T), B)`. D is walked in `BLOCK_D` chunks
    twice: first the two norms of every pair, then the dot of the normalised vectors, the
    order PyTorch's `cosine_similarity` uses (normalise first, then sum the products).
    """
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), T)
    pair = t < T - 1
    row0 = h_ptr + b * stride_hb + t.to(tl.int64)[:, None] * stride_ht
    row1 = row0 + stride_ht
    sq0 = tl.zeros([BLOCK_T], dtype=tl.float32)
    sq1 = tl.zeros([BLOCK_T], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m = pair[:, None] & (d < D)[None, :]
        x0 = tl.load(row0 + d[None, :], mask=m, other=0.0).to(tl.float32)
        x1 = tl.load(row1 + d[None, :], mask=m, other=0.0).to(tl.float32)
        sq0 += tl.sum(x0 * x0, axis=1)
        sq1 += tl.sum(x1 * x1, axis=1)
    # Each norm is clamped separately (PyTorch >= 2), so a zero vector gives s = 0.
    n0 = tl.maximum(tl.sqrt_rn(sq0), 1e-8)[:, None]
    n1 = tl.maximum(tl.sqrt_rn(sq1), 1e-8)[:, None]
    dot = tl.zeros([BLOCK_T], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m = pair[:, None] & (d < D)[None, :]
        x0 = tl.load(row0 + d[None, :], mask=m, other=0.0).to(tl.float32)
        x1 = tl.load(row1 + d[None, :], mask=m, other=0.0).to(tl.float32)
        # `div_rn`: `/` is an approximate division on GPU; PyTorch divides exactly.
        dot += tl.sum(tl.math.div_rn(x0, n0) * tl.math.div_rn(x1, n1), axis=1)
    sim = tl.where(t + 1 < n, dot, 0.0)
    tl.store(sim_ptr + b * stride_sb + t, sim, mask=pair)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _segment_scan_kernel(
    sim_ptr,
    len_ptr,
    gid_ptr,
    tlen_ptr,
    gstart_ptr,
    ngroups_ptr,
    stride_sb,
    stride_ib,
    stride_lb,
    stride_gsb,
    T,
    threshold,
    max_tokens,
    HAS_MAX: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Group ids, token lengths, group first frames and group count of item `b`.

    sim `[B, T-1]` fp32, len `[B]` int64; writes gid `[B, T]`, tlen `[B, T]`, gstart `[B, T]`
    and ngroups `[B]` (all int64). Grid `(B,)`: the program walks the item's frames in blocks
    of `BLOCK_T`, carrying the last similarity-run start and the number of groups so far.
    Rows of tlen and gstart at or past the item's group count are written as 0.
    """
    b = tl.program_id(0).to(tl.int64)
    n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), T).to(tl.int32)
    sim_row = sim_ptr + b * stride_sb
    tlen_row = tlen_ptr + b * stride_lb
    gstart_row = gstart_ptr + b * stride_gsb
    last_run = tl.zeros([], dtype=tl.int32)
    groups = tl.zeros([], dtype=tl.int32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        valid = t < n
        # Only transitions between two valid frames are read: the others are 0 anyway and
        # frames past the item start nothing.
        s_in = tl.load(sim_row + t - 1, mask=(t >= 1) & valid, other=0.0)
        run_start = (t == 0) | (s_in <= threshold)
        run = tl.associative_scan(tl.where(run_start, t, -1), 0, _max_combine)
        run = tl.maximum(run, last_run)
        s_out = tl.load(sim_row + t, mask=t + 1 < n, other=0.0)
        is_end = (t + 1 == n) | (s_out <= threshold)
        if HAS_MAX:
            into_run = t - run
            first = run + (into_run // max_tokens) * max_tokens
            is_start = (into_run % max_tokens) == 0
            is_end = is_end | ((into_run + 1) % max_tokens == 0)
        else:
            first = run
            is_start = run_start
        is_start = is_start & valid
        is_end = is_end & valid
        gid = groups + tl.cumsum(is_start.to(tl.int32), 0) - 1
        tl.store(gid_ptr + b * stride_ib + t, tl.where(valid, gid, -1).to(tl.int64), mask=t < T)
        # A group's length and first frame are known at its last frame.
        tl.store(tlen_row + gid, (t - first + 1).to(tl.int64), mask=is_end)
        tl.store(gstart_row + gid, first.to(tl.int64), mask=is_end)
        last_run = tl.max(run, axis=0)
        groups += tl.sum(is_start.to(tl.int32), axis=0)
    tl.store(ngroups_ptr + b, groups.to(tl.int64))
    for g0 in range((groups // BLOCK_T) * BLOCK_T, T, BLOCK_T):
        g = g0 + tl.arange(0, BLOCK_T)
        tail = (g >= groups) & (g < T)
        zero = tl.zeros([BLOCK_T], dtype=tl.int64)
        tl.store(tlen_row + g, zero, mask=tail)
        tl.store(gstart_row + g, zero, mask=tail)


@triton.jit
def _group_means_kernel(
    x_ptr,
    gstart_ptr,
    tlen_ptr,
    ngroups_ptr,
    out_ptr,
    stride_xb,
    stride_xt,
    stride_gsb,
    stride_lb,
    stride_ob,
    stride_og,
    G,
    D,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Means of groups `[g0, g0 + BLOCK_G)` of item `b` over channels `[d0, d0 + BLOCK_D)`.

    x `[B, T, D]` (last dim contiguous), gstart / tlen `[B, G]` int64 (first frame, length),
    ngroups `[B]` int64, out `[B, G, D]` (last dim contiguous). Grid
    `(cdiv(G, BLOCK_G), B, cdiv(D, BLOCK_D))`. Frame j of every group is added at step j, so
    each group is summed in frame order in fp32; groups past the item's count are 0.
    """
    pid_g = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    live = g < tl.load(ngroups_ptr + b)
    first = tl.load(gstart_ptr + b * stride_gsb + g, mask=live, other=0)
    count = tl.load(tlen_ptr + b * stride_lb + g, mask=live, other=0)
    rows = x_ptr + b * stride_xb + first[:, None] * stride_xt + d[None, :]
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(0, tl.max(count, axis=0)):
        m = (j < count)[:, None] & (d < D)[None, :]
        acc += tl.load(rows + j * stride_xt, mask=m, other=0.0).to(tl.float32)
    mean = tl.math.div_rn(acc, tl.maximum(count, 1).to(tl.float32)[:, None])
    tl.store(
        out_ptr + b * stride_ob + g.to(tl.int64)[:, None] * stride_og + d[None, :],
        mean.to(out_ptr.dtype.element_ty),
        mask=(g < G)[:, None] & (d < D)[None, :],
    )


@triton.jit
def _group_means_bwd_kernel(
    grad_ptr,
    gid_ptr,
    tlen_ptr,
    gx_ptr,
    stride_gb,
    stride_gg,
    stride_ib,
    stride_lb,
    stride_xb,
    stride_xt,
    T,
    D,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """`grad_x[b, t] = grad[b, gid[b, t]] / tlen[b, gid[b, t]]`, 0 where gid = -1.

    grad `[B, G, D]` (last dim contiguous), gid `[B, T]` int64, tlen `[B, G]` int64, grad_x
    `[B, T, D]` (last dim contiguous). Grid `(cdiv(T, BLOCK_T), B, cdiv(D, BLOCK_D))`.
    """
    b = tl.program_id(1).to(tl.int64)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    gid = tl.load(gid_ptr + b * stride_ib + t, mask=t < T, other=-1)
    live = gid >= 0
    gid = tl.maximum(gid, 0)
    count = tl.load(tlen_ptr + b * stride_lb + gid, mask=live, other=1)
    m = live[:, None] & (d < D)[None, :]
    g = tl.load(
        grad_ptr + b * stride_gb + gid[:, None] * stride_gg + d[None, :], mask=m, other=0.0
    ).to(tl.float32)
    gx = tl.math.div_rn(g, count.to(tl.float32)[:, None])
    tl.store(
        gx_ptr + b * stride_xb + t.to(tl.int64)[:, None] * stride_xt + d[None, :],
        gx.to(gx_ptr.dtype.element_ty),
        mask=(t < T)[:, None] & (d < D)[None, :],
    )


class Segments(NamedTuple):
    """Segmentation of a batch, sized for the worst case G = T.

    similarity `[B, T-1]` fp32; group_ids `[B, T]` int64 (-1 past the item);
    token_lengths `[B, T]` int64 (0 past the item's groups); num_groups `[B]` int64;
    group_starts `[B, T]` int64 (first frame of each group, 0 past the item's groups).
    """

    similarity: torch.Tensor
    group_ids: torch.Tensor
    token_lengths: torch.Tensor
    num_groups: torch.Tensor
    group_starts: torch.Tensor


class Merged(NamedTuple):
    """`Segments` plus the group means `[B, T, D_i]` of each stream (0 past the groups)."""

    similarity: torch.Tensor
    group_ids: torch.Tensor
    token_lengths: torch.Tensor
    num_groups: torch.Tensor
    group_starts: torch.Tensor
    means: tuple[torch.Tensor, ...]


def _check_float(name: str, t, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{name} must be [B, T, D], got shape {list(t.shape)}")
    check_float_dtype(name, t)
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like h, got {t.device}")


def _check_index(name: str, t, shape: tuple[int, ...], device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must be of shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def _check_segment_args(h, lengths, threshold, max_tokens_per_group) -> None:
    _check_float("h", h)
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor or None, got {type(lengths).__name__}")
        kind = lengths.dtype
        if kind.is_floating_point or kind.is_complex or kind == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if tuple(lengths.shape) != (h.shape[0],):
            raise ValueError(
                f"lengths must be of shape [B] = [{h.shape[0]}], got {list(lengths.shape)}"
            )
        if lengths.device != h.device:
            raise ValueError(f"lengths must be on {h.device} like h, got {lengths.device}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {threshold!r}")
    if max_tokens_per_group is not None and (
        isinstance(max_tokens_per_group, bool) or not isinstance(max_tokens_per_group, int)
    ):
        raise TypeError(
            f"max_tokens_per_group must be an int or None, got {max_tokens_per_group!r}"
        )


# ----------------------------------------------------------------------------- torch paths


def segment_torch(
    h: torch.Tensor, lengths: torch.Tensor, threshold: float, max_tokens: int
) -> Segments:
    """Torch path of `segment`: the reference expressions, with `[B, T]` outputs."""
    batch, frames, _ = h.shape
    device = h.device
    lengths = lengths.clamp(0, frames)
    sim = F.cosine_similarity(h[:, :-1].float(), h[:, 1:].float(), dim=-1)
    t = torch.arange(frames, device=device)
    sim = torch.where(t[1:].view(1, -1) < lengths.view(-1, 1), sim, torch.zeros_like(sim))
    run_start = torch.cat(
        [torch.ones(batch, 1, dtype=torch.bool, device=device), sim <= threshold], dim=1
    )
    if max_tokens > 0:
        tt = t.expand(batch, -1)
        run = torch.where(run_start, tt, torch.zeros_like(tt)).cummax(dim=1).values
        starts = (tt - run) % max_tokens == 0
    else:
        starts = run_start
    valid = t.view(1, -1) < lengths.view(-1, 1)
    starts = starts & valid
    gid = torch.where(valid, starts.long().cumsum(dim=1) - 1, -1)
    slot = gid.clamp(min=0)
    token_lengths = torch.zeros(batch, frames, dtype=torch.long, device=device)
    token_lengths.scatter_add_(1, slot, valid.long())
    group_starts = torch.zeros(batch, frames, dtype=torch.long, device=device)
    # Only the first frame of each group writes its group's slot: no write conflicts.
    group_starts.scatter_add_(1, slot, torch.where(starts, t, 0).expand(batch, -1))
    return Segments(sim, gid, token_lengths, starts.long().sum(dim=1), group_starts)


def group_means_torch(
    x: torch.Tensor, group_ids: torch.Tensor, token_lengths: torch.Tensor
) -> torch.Tensor:
    """Torch path of the means: the reference's `scatter_add_` (frames added one by one, in
    frame order), in fp32, divided by the clamped count. Returns `[B, G, D]` contiguous
    with G = token_lengths rows.

    The scatter runs along x's unit-stride dimension: for a channels-first x (a transposed
    `[B, D, T]`, as the encoders produce it) along time within each channel row, which
    reads x once, contiguously, and adds in the same order. Frames past an item's length
    go to a scratch group that is dropped, so x is never copied to mask them.
    """
    batch, frames, dim = x.shape
    groups = token_lengths.shape[1]
    index = torch.where(group_ids >= 0, group_ids, groups)
    if x.stride(1) == 1 and dim > 1:
        sums = x.new_zeros(batch, dim, groups + 1, dtype=torch.float32)
        sums.scatter_add_(2, index.unsqueeze(1).expand(-1, dim, -1), x.transpose(1, 2).float())
        sums = sums[..., :groups].transpose(1, 2)
    else:
        sums = x.new_zeros(batch, groups + 1, dim, dtype=torch.float32)
        sums.scatter_add_(1, index.unsqueeze(-1).expand(-1, -1, dim), x.float())
        sums = sums[:, :groups]
    means = torch.empty(batch, groups, dim, dtype=torch.float32, device=x.device)
    torch.div(sums, token_lengths.clamp(min=1).unsqueeze(-1).float(), out=means)
    return means.to(x.dtype)


def group_means_backward_torch(
    grad: torch.Tensor, group_ids: torch.Tensor, token_lengths: torch.Tensor
) -> torch.Tensor:
    """Torch path of the means' backward: each frame gets its group's gradient / count."""
    scaled = grad.float() / token_lengths.clamp(min=1).unsqueeze(-1).float()
    index = group_ids.clamp(min=0).unsqueeze(-1).expand(-1, -1, grad.shape[-1])
    gx = torch.gather(scaled, 1, index)
    return torch.where((group_ids >= 0).unsqueeze(-1), gx, 0.0).to(grad.dtype)


# ----------------------------------------------------------------------------- launchers


def _launch_segment(h, lengths, threshold, max_tokens) -> Segments:
    check_inner_contiguous(h=h)
    lengths = lengths.contiguous()  # read as len_ptr + b
    batch, frames, dim = h.shape
    kw = dict(dtype=torch.long, device=h.device)
    sim = torch.empty(batch, max(frames - 1, 0), dtype=torch.float32, device=h.device)
    gid = torch.empty(batch, frames, **kw)
    token_lengths = torch.empty(batch, frames, **kw)
    group_starts = torch.empty(batch, frames, **kw)
    num_groups = torch.empty(batch, **kw)
    if batch == 0:
        return Segments(sim, gid, token_lengths, num_groups, group_starts)
    if frames > 1:
        _adjacent_cosine_kernel[(triton.cdiv(frames - 1, COSINE_BLOCK_T), batch)](
            h,
            lengths,
            sim,
            h.stride(0),
            h.stride(1),
            sim.stride(0),
            frames,
            dim,
            BLOCK_T=COSINE_BLOCK_T,
            BLOCK_D=COSINE_BLOCK_D,
            num_warps=NUM_WARPS,
        )
    _segment_scan_kernel[(batch,)](
        sim,
        lengths,
        gid,
        token_lengths,
        group_starts,
        num_groups,
        sim.stride(0),
        gid.stride(0),
        token_lengths.stride(0),
        group_starts.stride(0),
        frames,
        float(threshold),
        max(max_tokens, 1),
        HAS_MAX=max_tokens > 0,
        BLOCK_T=min(SCAN_BLOCK_T, triton.next_power_of_2(max(frames, 1))),
        num_warps=NUM_WARPS,
    )
    return Segments(sim, gid, token_lengths, num_groups, group_starts)


def _launch_means(x, group_starts, token_lengths, num_groups) -> torch.Tensor:
    check_inner_contiguous(x=x)
    # Small index and bias tensors are read with unit inner stride: make them so (free when
    # they already are).
    group_starts, token_lengths, num_groups = (
        t.contiguous() for t in (group_starts, token_lengths, num_groups)
    )
    batch, _, dim = x.shape
    groups = token_lengths.shape[1]
    out = torch.empty(batch, groups, dim, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(groups, MEANS_BLOCK_G), batch, triton.cdiv(dim, MEANS_BLOCK_D))
    _group_means_kernel[grid](
        x,
        group_starts,
        token_lengths,
        num_groups,
        out,
        x.stride(0),
        x.stride(1),
        group_starts.stride(0),
        token_lengths.stride(0),
        out.stride(0),
        out.stride(1),
        groups,
        dim,
        BLOCK_G=MEANS_BLOCK_G,
        BLOCK_D=MEANS_BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return out


def _launch_means_backward(grad, group_ids, token_lengths, dtype) -> torch.Tensor:
    check_inner_contiguous(grad=grad)
    group_ids, token_lengths = group_ids.contiguous(), token_lengths.contiguous()
    batch, frames = group_ids.shape
    dim = grad.shape[-1]
    gx = torch.empty(batch, frames, dim, dtype=dtype, device=grad.device)
    if gx.numel() == 0:
        return gx
    grid = (triton.cdiv(frames, MEANS_BLOCK_G), batch, triton.cdiv(dim, MEANS_BLOCK_D))
    _group_means_bwd_kernel[grid](
        grad,
        group_ids,
        token_lengths,
        gx,
        grad.stride(0),
        grad.stride(1),
        group_ids.stride(0),
        token_lengths.stride(0),
        gx.stride(0),
        gx.stride(1),
        frames,
        dim,
        BLOCK_T=MEANS_BLOCK_G,
        BLOCK_D=MEANS_BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return gx


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("flexicodec_fast::merge_segment", mutates_args=())
def _segment_op(
    h: torch.Tensor, lengths: torch.Tensor, threshold: float, max_tokens: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if select_backend(backend, h.device) == "triton":
        return tuple(_launch_segment(h, lengths, threshold, max_tokens))
    return tuple(segment_torch(h, lengths, threshold, max_tokens))


@_segment_op.register_fake
def _(h, lengths, threshold, max_tokens, backend):
    batch, frames, _ = h.shape
    long = dict(dtype=torch.long)
    return (
        h.new_empty(batch, max(frames - 1, 0), dtype=torch.float32),
        h.new_empty(batch, frames, **long),
        h.new_empty(batch, frames, **long),
        h.new_empty(batch, **long),
        h.new_empty(batch, frames, **long),
    )


@torch.library.custom_op("flexicodec_fast::merge_group_means", mutates_args=())
def _means_op(
    x: torch.Tensor,
    group_ids: torch.Tensor,
    group_starts: torch.Tensor,
    token_lengths: torch.Tensor,
    num_groups: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    if select_backend(backend, x.device) == "triton":
        return _launch_means(x, group_starts, token_lengths, num_groups)
    return group_means_torch(x, group_ids, token_lengths)


@_means_op.register_fake
def _(x, group_ids, group_starts, token_lengths, num_groups, backend):
    return x.new_empty(x.shape[0], token_lengths.shape[1], x.shape[2])


@torch.library.custom_op("flexicodec_fast::merge_group_means_backward", mutates_args=())
def _means_backward_op(
    grad: torch.Tensor, group_ids: torch.Tensor, token_lengths: torch.Tensor, backend: str
) -> torch.Tensor:
    if select_backend(backend, grad.device) == "triton":
        return _launch_means_backward(grad, group_ids, token_lengths, grad.dtype)
    return group_means_backward_torch(grad, group_ids, token_lengths)


@_means_backward_op.register_fake
def _(grad, group_ids, token_lengths, backend):
    return grad.new_empty(group_ids.shape[0], group_ids.shape[1], grad.shape[2])


def _means_setup_context(ctx, inputs, output):
    _, group_ids, _, token_lengths, _, backend = inputs
    ctx.save_for_backward(group_ids, token_lengths)
    ctx.backend = backend


def _means_backward(ctx, grad):
    group_ids, token_lengths = ctx.saved_tensors
    gx = _means_backward_op(grad.contiguous(), group_ids, token_lengths, ctx.backend)
    return gx, None, None, None, None, None


_means_op.register_autograd(_means_backward, setup_context=_means_setup_context)


# ----------------------------------------------------------------------------- public API


def segment(
    h: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    threshold: float,
    max_tokens_per_group: int | None = 8,
    backend: str = "auto",
) -> Segments:
    """Merge the frames of `h` `[B, T, D]` into groups (spec §4); see the module docstring.

    lengths: `[B]` integer or None (all T frames valid); max_tokens_per_group: None or <= 0
    disables the forced split. Returns `Segments` sized for G = T. Not differentiable.
    backend: "auto" | "triton" | "torch". Registered as `torch.ops.flexicodec_fast.merge_segment`.
    """
    _check_segment_args(h, lengths, threshold, max_tokens_per_group)
    select_backend(backend, h.device)
    if lengths is None:
        lengths = torch.full((h.shape[0],), h.shape[1], dtype=torch.long, device=h.device)
    out = _segment_op(h, lengths.long(), float(threshold), int(max_tokens_per_group or 0), backend)
    return Segments(*out)


def group_means(x: torch.Tensor, seg: Segments, *, backend: str = "auto") -> torch.Tensor:
    """Mean of the frames of each group of `seg`, `[B, T, D]` (rows past an item's groups are
    0), differentiable in `x`: `d mean_g / d x_t = 1 / count_g` for t in g.

    x: `[B, T, D]` float32/float16/bfloat16 with T, B those of the segmentation.
    Registered as `torch.ops.flexicodec_fast.merge_group_means`.
    """
    _check_float("x", x)
    batch, frames = seg.group_ids.shape
    if tuple(x.shape[:2]) != (batch, frames):
        raise ValueError(
            f"x must be [B, T, D] with [B, T] = {[batch, frames]} (the "
            f"segmentation's), got shape {list(x.shape)}"
        )
    for name in ("group_ids", "token_lengths", "group_starts"):
        _check_index(name, getattr(seg, name), (batch, frames), x.device)
    _check_index("num_groups", seg.num_groups, (batch,), x.device)
    select_backend(backend, x.device)
    return _means_op(x, seg.group_ids, seg.group_starts, seg.token_lengths, seg.num_groups, backend)


def merge(
    h: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    threshold: float,
    max_tokens_per_group: int | None = 8,
    streams: tuple[torch.Tensor, ...] = (),
    backend: str = "auto",
) -> Merged:
    """`segment(h, ...)` and the group means of every stream `[B, T, D_i]` (e.g. the semantic
    `h` itself and the acoustic latent). Returns `Merged`, sized for G = T."""
    if isinstance(streams, torch.Tensor):
        raise TypeError("streams must be a tuple of tensors, got a single tensor: wrap it, (x,)")
    for i, x in enumerate(streams):
        _check_float(f"streams[{i}]", x, h.device)
    seg = segment(
        h, lengths, threshold=threshold, max_tokens_per_group=max_tokens_per_group, backend=backend
    )
    means = tuple(group_means(x, seg, backend=backend) for x in streams)
    return Merged(*seg, means)
