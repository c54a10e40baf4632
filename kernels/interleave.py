"""Interleave group queries after their frames, and retrieve them again (spec §5, design §3).

Aggregator input, for item b with `n = len[b]` frames in `G_b = num_groups[b]` groups:

    seq[b, t + gid[t]]     = x[b, t]                        t < n  (frame t, group gid[t])
    seq[b, end_g + g + 1]  = mean[b, g] + embedding          g < G_b (query after its group)
    seq[b, p]              = 0                              n + G_b <= p < T + G

and `retrieve`: `tokens[b, g] = y[b, end_g + g + 1]` for g < G_b, 0 for G_b <= g < G.

Both are driven by the frame-centric group ids (`gid [B, T]`, -1 past the item): frame t is
the last frame of its group iff `gid[t+1] != gid[t]`, so the query positions need no prefix
sum over the group lengths. One program owns `BLOCK_T` consecutive indices i of one item and
one `BLOCK_D` slice of channels; as a frame index it places frame i (and the query of the
group ending at i); as a sequence/token row index it writes the zero tail. Every output row
is written exactly once, so nothing is zero-filled beforehand.

Backward: the gradient of `interleave` gathers the frame and query positions (the same
kernel as `retrieve`, also writing frame gradients), and `grad_embedding` is the sum of the
query gradients; the gradient of `retrieve` scatters into zeros (the `interleave` kernel
with no frames and no embedding).

Numerics: pure data movement, bit-identical to the reference, except the query
`mean + embedding`, which is one fp32 addition rounded once to x's dtype (the reference
promotes to fp32 and rounds on the scatter: the same bits).

Layout: x `[B, T, D]`, means `[B, G, D]` (same dtype), embedding `[D]`, y `[B, T + G, D]`,
all with a contiguous last dimension; gid `[B, T]`, len `[B]`, num_groups `[B]` int64.
The outputs are contiguous, in x's (y's) dtype.
"""

from __future__ import annotations

import torch

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

BLOCK_T = 16
BLOCK_D = 128
NUM_WARPS = 4


@triton.jit
def _interleave_kernel(
    x_ptr,
    means_ptr,
    emb_ptr,
    gid_ptr,
    len_ptr,
    ngroups_ptr,
    out_ptr,
    stride_xb,
    stride_xt,
    stride_mb,
    stride_mg,
    stride_ib,
    stride_ob,
    stride_op,
    T,
    G,
    D,
    HAS_FRAMES: tl.constexpr,
    HAS_EMB: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rows of `out [B, T + G, D]` owed by indices `[i0, i0 + BLOCK_T)` of item `b`.

    Frame i goes to row `i + gid[i]` (x[i], or 0 without HAS_FRAMES); if it ends its group,
    row `i + gid[i] + 1` gets `means[gid[i]]` (+ emb with HAS_EMB); row i itself is zeroed
    when it lies in the tail `[len[b] + num_groups[b], T + G)`. Grid
    `(cdiv(T + G, BLOCK_T), B, cdiv(D, BLOCK_D))`.
    """
    b = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = (d < D)[None, :]
    gid_row = gid_ptr + b * stride_ib
    gid = tl.load(gid_row + i, mask=i < T, other=-1)
    nxt = tl.load(gid_row + i + 1, mask=i + 1 < T, other=-1)
    # gid < G keeps inconsistent ids (more groups than means rows) inside the buffers.
    live = (gid >= 0) & (gid < G)
    is_end = live & (nxt != gid)
    gid = tl.maximum(gid, 0)
    out_row = out_ptr + b * stride_ob
    pos = (i.to(tl.int64) + gid)[:, None] * stride_op + d[None, :]
    if HAS_FRAMES:
        frame = tl.load(
            x_ptr + b * stride_xb + i.to(tl.int64)[:, None] * stride_xt + d[None, :],
            mask=live[:, None] & dm,
            other=0.0,
        )
    else:
        frame = tl.zeros([BLOCK_T, BLOCK_D], dtype=out_ptr.dtype.element_ty)
    tl.store(out_row + pos, frame.to(out_ptr.dtype.element_ty), mask=live[:, None] & dm)
    q = tl.load(
        means_ptr + b * stride_mb + gid[:, None] * stride_mg + d[None, :],
        mask=is_end[:, None] & dm,
        other=0.0,
    ).to(tl.float32)
    if HAS_EMB:
        q += tl.load(emb_ptr + d, mask=d < D, other=0.0).to(tl.float32)[None, :]
    tl.store(out_row + pos + stride_op, q.to(out_ptr.dtype.element_ty), mask=is_end[:, None] & dm)
    n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), T)
    tail = (i >= n + tl.load(ngroups_ptr + b)) & (i < T + G)
    zero = tl.zeros([BLOCK_T, BLOCK_D], dtype=out_ptr.dtype.element_ty)
    tl.store(
        out_row + i.to(tl.int64)[:, None] * stride_op + d[None, :], zero, mask=tail[:, None] & dm
    )


@triton.jit
def _deinterleave_kernel(
    y_ptr,
    gid_ptr,
    ngroups_ptr,
    xg_ptr,
    q_ptr,
    stride_yb,
    stride_yp,
    stride_ib,
    stride_xb,
    stride_xt,
    stride_qb,
    stride_qg,
    T,
    G,
    D,
    HAS_FRAMES: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gather rows of `y [B, T + G, D]` for indices `[i0, i0 + BLOCK_T)` of item `b`.

    With HAS_FRAMES, `xg[b, i] = y[b, i + gid[i]]` (0 where gid = -1), for i < T. If frame i
    ends group g, `q[b, g] = y[b, i + g + 1]`; row i of q is zeroed when
    `num_groups[b] <= i < G`. Grid `(cdiv(max(T, G), BLOCK_T), B, cdiv(D, BLOCK_D))`.
    """
    b = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = (d < D)[None, :]
    gid_row = gid_ptr + b * stride_ib
    gid = tl.load(gid_row + i, mask=i < T, other=-1)
    nxt = tl.load(gid_row + i + 1, mask=i + 1 < T, other=-1)
    live = (gid >= 0) & (gid < G)
    is_end = live & (nxt != gid)
    gid = tl.maximum(gid, 0)
    y_rows = y_ptr + b * stride_yb + (i.to(tl.int64) + gid)[:, None] * stride_yp + d[None, :]
    if HAS_FRAMES:
        frame = tl.load(y_rows, mask=live[:, None] & dm, other=0.0)
        tl.store(
            xg_ptr + b * stride_xb + i.to(tl.int64)[:, None] * stride_xt + d[None, :],
            frame,
            mask=(i < T)[:, None] & dm,
        )
    q_row = q_ptr + b * stride_qb
    q = tl.load(y_rows + stride_yp, mask=is_end[:, None] & dm, other=0.0)
    tl.store(q_row + gid[:, None] * stride_qg + d[None, :], q, mask=is_end[:, None] & dm)
    empty = (i >= tl.load(ngroups_ptr + b)) & (i < G)
    tl.store(
        q_row + i.to(tl.int64)[:, None] * stride_qg + d[None, :],
        tl.zeros([BLOCK_T, BLOCK_D], dtype=q_ptr.dtype.element_ty),
        mask=empty[:, None] & dm,
    )


# ----------------------------------------------------------------------------- validation


def _check_tensor(name: str, t, dims: int, kind: str, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {list(t.shape)}")
    if kind == "float":
        check_float_dtype(name, t)
    if kind == "index" and t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be of shape {list(shape)}, got {list(t.shape)}")


def _check_segments(group_ids, num_groups, batch: int, frames: int, device) -> None:
    _check_tensor("group_ids", group_ids, 2, "index", device)
    _check_shape("group_ids", group_ids, (batch, frames))
    _check_tensor("num_groups", num_groups, 1, "index", device)
    _check_shape("num_groups", num_groups, (batch,))


# ----------------------------------------------------------------------------- torch paths


def _query_positions(group_ids: torch.Tensor, groups: int):
    """Frame-centric positions: `(live [B,T], frame_pos [B,T], end [B,T])`, where `end`
    marks the last frame of each group (with `gid < groups`)."""
    frames = group_ids.shape[1]
    live = (group_ids >= 0) & (group_ids < groups)
    nxt = torch.cat([group_ids[:, 1:], torch.full_like(group_ids[:, :1], -1)], dim=1)
    end = live & (nxt != group_ids)
    frame_pos = torch.arange(frames, device=group_ids.device) + group_ids.clamp(min=0)
    return live, frame_pos, end


def interleave_torch(x, means, embedding, group_ids, num_groups) -> torch.Tensor:
    """Torch path of `interleave` (x None: zero frames; embedding None: none added).

    Every row of `[B * (T + G), D]` is written once: all frames in one `index_copy_` from
    the `[B * T, D]` row view of x (so x is read once, and a channels-first x is transposed
    on that read only), the queries in a second, zeros on the tail. Frames past an item's
    length go to one scratch row past the end, which keeps the source a plain view. Nothing
    is zero-filled beforehand: on CPU that pass, and a fresh page-faulted buffer per copy,
    cost more than the copies themselves at small T.
    """
    batch, frames = group_ids.shape
    groups, dim = means.shape[1:]
    length = frames + groups
    live, frame_pos, end = _query_positions(group_ids, groups)
    item = torch.arange(batch, device=group_ids.device).view(-1, 1)
    scratch = batch * length
    buffer = means.new_empty(scratch + 1, dim)
    out = buffer[:scratch]
    if x is None:
        out.zero_()
    else:
        frame_rows = torch.where(live, item * length + frame_pos, scratch).view(-1)
        buffer.index_copy_(0, frame_rows, x.reshape(batch * frames, dim).to(means.dtype))
        position = torch.arange(length, device=group_ids.device)
        filled = live.sum(dim=1, keepdim=True) + num_groups.view(-1, 1)
        out.index_fill_(0, (item * length + position)[position >= filled], 0)
    query_rows = (item * length + frame_pos + 1)[end]
    query_index = (item * groups + group_ids)[end]
    queries = means if embedding is None else means.float() + embedding.float()
    out.index_copy_(
        0, query_rows, queries.reshape(-1, dim).index_select(0, query_index).to(means.dtype)
    )
    return out.view(batch, length, dim)


def deinterleave_torch(y, group_ids, num_groups, with_frames: bool):
    """Torch path of the gather: `(frames [B,T,D] or None, queries [B,G,D])`, whole rows
    read with `index_select`; frames past an item's length and queries past its groups
    are 0."""
    batch, frames = group_ids.shape
    dim = y.shape[-1]
    length = y.shape[1]
    groups = length - frames
    live, frame_pos, end = _query_positions(group_ids, groups)
    item = torch.arange(batch, device=group_ids.device).view(-1, 1)
    flat = y.reshape(-1, dim)
    # Each group's query row, written at its last frame; a group that has no frames (past
    # the item) keeps row 0 and is zeroed below.
    slot = torch.where(end, group_ids, groups)
    rows = torch.zeros(batch, groups + 1, dtype=torch.long, device=y.device)
    rows.scatter_(1, slot, item * length + frame_pos + 1)
    q = flat.index_select(0, rows[:, :groups].reshape(-1))
    g = torch.arange(groups, device=y.device)
    q.index_fill_(0, (item * groups + g)[g >= num_groups.view(-1, 1)], 0)
    xg = None
    if with_frames:
        xg = flat.index_select(0, (item * length + frame_pos).view(-1))
        xg.index_fill_(0, (item * frames + torch.arange(frames, device=y.device))[~live], 0)
        xg = xg.view(batch, frames, dim)
    return xg, q.view(batch, groups, dim)


# ----------------------------------------------------------------------------- launchers


def _launch_interleave(x, means, embedding, group_ids, lengths, num_groups) -> torch.Tensor:
    """x None: zero frames (the backward of `retrieve`)."""
    check_inner_contiguous(means=means)
    if x is not None:
        check_inner_contiguous(x=x)
    # Small index and bias tensors are read with unit inner stride: make them so (free when
    # they already are).
    group_ids, lengths, num_groups = (t.contiguous() for t in (group_ids, lengths, num_groups))
    batch, frames = group_ids.shape
    groups, dim = means.shape[1:]
    out = torch.empty(batch, frames + groups, dim, dtype=means.dtype, device=means.device)
    if out.numel() == 0:
        return out
    x_arg = means if x is None else x
    emb = means if embedding is None else embedding.contiguous()
    grid = (triton.cdiv(frames + groups, BLOCK_T), batch, triton.cdiv(dim, BLOCK_D))
    _interleave_kernel[grid](
        x_arg,
        means,
        emb,
        group_ids,
        lengths,
        num_groups,
        out,
        x_arg.stride(0),
        x_arg.stride(1),
        means.stride(0),
        means.stride(1),
        group_ids.stride(0),
        out.stride(0),
        out.stride(1),
        frames,
        groups,
        dim,
        HAS_FRAMES=x is not None,
        HAS_EMB=embedding is not None,
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return out


def _launch_deinterleave(y, group_ids, num_groups, with_frames: bool):
    check_inner_contiguous(y=y)
    group_ids, num_groups = group_ids.contiguous(), num_groups.contiguous()
    batch, frames = group_ids.shape
    dim = y.shape[-1]
    groups = y.shape[1] - frames
    q = torch.empty(batch, groups, dim, dtype=y.dtype, device=y.device)
    xg = torch.empty(batch, frames, dim, dtype=y.dtype, device=y.device) if with_frames else q
    if batch * max(frames, groups) * dim == 0:
        return (xg if with_frames else None), q
    grid = (triton.cdiv(max(frames, groups), BLOCK_T), batch, triton.cdiv(dim, BLOCK_D))
    _deinterleave_kernel[grid](
        y,
        group_ids,
        num_groups,
        xg,
        q,
        y.stride(0),
        y.stride(1),
        group_ids.stride(0),
        xg.stride(0),
        xg.stride(1),
        q.stride(0),
        q.stride(1),
        frames,
        groups,
        dim,
        HAS_FRAMES=with_frames,
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return (xg if with_frames else None), q


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("flexicodec_fast::interleave_queries", mutates_args=())
def _interleave_op(
    x: torch.Tensor,
    means: torch.Tensor,
    embedding: torch.Tensor,
    group_ids: torch.Tensor,
    lengths: torch.Tensor,
    num_groups: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    if select_backend(backend, x.device) == "triton":
        return _launch_interleave(x, means, embedding, group_ids, lengths, num_groups)
    return interleave_torch(x, means, embedding, group_ids, num_groups)


@_interleave_op.register_fake
def _(x, means, embedding, group_ids, lengths, num_groups, backend):
    return x.new_empty(x.shape[0], x.shape[1] + means.shape[1], x.shape[2])


@torch.library.custom_op("flexicodec_fast::interleave_queries_backward", mutates_args=())
def _interleave_backward_op(
    grad: torch.Tensor, group_ids: torch.Tensor, num_groups: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if select_backend(backend, grad.device) == "triton":
        return _launch_deinterleave(grad, group_ids, num_groups, True)
    return deinterleave_torch(grad, group_ids, num_groups, True)


@_interleave_backward_op.register_fake
def _(grad, group_ids, num_groups, backend):
    batch, frames = group_ids.shape
    return (
        grad.new_empty(batch, frames, grad.shape[2]),
        grad.new_empty(batch, grad.shape[1] - frames, grad.shape[2]),
    )


def _interleave_setup(ctx, inputs, output):
    x, means, embedding, group_ids, lengths, num_groups, backend = inputs
    ctx.save_for_backward(group_ids, num_groups)
    ctx.dtypes = (x.dtype, means.dtype, embedding.dtype)
    ctx.backend = backend


def _interleave_backward(ctx, grad):
    group_ids, num_groups = ctx.saved_tensors
    grad_x, grad_means = _interleave_backward_op(
        grad.contiguous(), group_ids, num_groups, ctx.backend
    )
    # Rows past an item's groups are 0, so the plain sum is over the placed queries only.
    grad_emb = grad_means.float().sum((0, 1)).to(ctx.dtypes[2])
    return (
        grad_x.to(ctx.dtypes[0]),
        grad_means.to(ctx.dtypes[1]),
        grad_emb,
        None,
        None,
        None,
        None,
    )


_interleave_op.register_autograd(_interleave_backward, setup_context=_interleave_setup)


@torch.library.custom_op("flexicodec_fast::retrieve_queries", mutates_args=())
def _retrieve_op(
    y: torch.Tensor, group_ids: torch.Tensor, num_groups: torch.Tensor, backend: str
) -> torch.Tensor:
    if select_backend(backend, y.device) == "triton":
        return _launch_deinterleave(y, group_ids, num_groups, False)[1]
    return deinterleave_torch(y, group_ids, num_groups, False)[1]


@_retrieve_op.register_fake
def _(y, group_ids, num_groups, backend):
    return y.new_empty(y.shape[0], y.shape[1] - group_ids.shape[1], y.shape[2])


@torch.library.custom_op("flexicodec_fast::retrieve_queries_backward", mutates_args=())
def _retrieve_backward_op(
    grad: torch.Tensor, group_ids: torch.Tensor, num_groups: torch.Tensor, backend: str
) -> torch.Tensor:
    # No frames (their rows are 0) and no embedding: the query rows carry the gradient,
    # every other row, the tail included, is 0.
    if select_backend(backend, grad.device) == "triton":
        lengths = (group_ids >= 0).sum(dim=1)
        return _launch_interleave(None, grad, None, group_ids, lengths, num_groups)
    return interleave_torch(None, grad, None, group_ids, num_groups)


@_retrieve_backward_op.register_fake
def _(grad, group_ids, num_groups, backend):
    return grad.new_empty(grad.shape[0], group_ids.shape[1] + grad.shape[1], grad.shape[2])


def _retrieve_setup(ctx, inputs, output):
    _, group_ids, num_groups, backend = inputs
    ctx.save_for_backward(group_ids, num_groups)
    ctx.backend = backend


def _retrieve_backward(ctx, grad):
    group_ids, num_groups = ctx.saved_tensors
    return (
        _retrieve_backward_op(grad.contiguous(), group_ids, num_groups, ctx.backend),
        None,
        None,
        None,
    )


_retrieve_op.register_autograd(_retrieve_backward, setup_context=_retrieve_setup)


# ----------------------------------------------------------------------------- public API


def interleave(
    x: torch.Tensor,
    means: torch.Tensor,
    embedding: torch.Tensor,
    group_ids: torch.Tensor,
    lengths: torch.Tensor,
    num_groups: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Aggregator input `[B, T + G, D]`: frames at `t + gid[t]`, queries `means[g] +
    embedding` right after their group's last frame, zeros from `len + num_groups` on.

    x `[B, T, D]`, means `[B, G, D]` (same dtype; G is the caller's: the worst case T, or
    the batch's maximum group count), embedding `[D]`, group_ids `[B, T]` (-1 past the
    item), lengths, num_groups `[B]` (all int64, e.g. from `merge.segment`). Differentiable
    in x, means and embedding. Registered as `torch.ops.flexicodec_fast.interleave_queries`.
    """
    _check_tensor("x", x, 3, "float")
    batch, frames, dim = x.shape
    _check_tensor("means", means, 3, "float", x.device)
    if means.dtype != x.dtype:
        raise TypeError(f"means must have x's dtype {x.dtype}, got {means.dtype}")
    _check_shape("means", means, (batch, means.shape[1], dim))
    _check_tensor("embedding", embedding, 1, "float", x.device)
    _check_shape("embedding", embedding, (dim,))
    _check_segments(group_ids, num_groups, batch, frames, x.device)
    _check_tensor("lengths", lengths, 1, "index", x.device)
    _check_shape("lengths", lengths, (batch,))
    select_backend(backend, x.device)
    return _interleave_op(x, means, embedding, group_ids, lengths, num_groups, backend)


def retrieve(
    y: torch.Tensor, group_ids: torch.Tensor, num_groups: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Query outputs `[B, G, D]` of a `[B, T + G, D]` aggregator output (T from group_ids
    `[B, T]`), `y[b, end_g + g + 1]` for g < num_groups[b], 0 after. Differentiable in y.
    Registered as `torch.ops.flexicodec_fast.retrieve_queries`."""
    _check_tensor("y", y, 3, "float")
    batch = y.shape[0]
    if not isinstance(group_ids, torch.Tensor) or group_ids.dim() != 2:
        raise ValueError(
            f"group_ids must be a [B, T] tensor, got "
            f"{getattr(group_ids, 'shape', type(group_ids).__name__)}"
        )
    frames = group_ids.shape[1]
    if y.shape[1] < frames:
        raise ValueError(
            f"y must be [B, T + G, D] with T = {frames} (group_ids' T), got shape {list(y.shape)}"
        )
    _check_segments(group_ids, num_groups, batch, frames, y.device)
    select_backend(backend, y.device)
    return _retrieve_op(y, group_ids, num_groups, backend)
