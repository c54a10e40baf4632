"""Unmerge: expand merged tokens back to frames and sum the two streams (spec §1.2 step 3).

    out[b, t] = ac[b, g] + sem[b, g]    for the group g with ends[b, g-1] <= t < ends[b, g]
    out[b, t] = 0                       for t >= ends[b, G-1] (past the item's frames)

where `ends = cumsum(token_lengths, 1)`. Groups are contiguous and in order; a length may be
0 (padded groups vanish). The official decoder repeats each stream separately and sums
`acoustic_expanded + semantic_expanded`; both paths here add in that order, per element, so
the result is bit-identical to it. Without acoustic tokens the output is the repeated
semantic tokens. `T` is the caller's output length: frames past it are not written (no host
synchronisation is needed to size the output; allocate the worst case, design §8). Token
lengths must be >= 0 (not checked: that would synchronise with the device).

Layout: sem, ac `[B, G, D]` channels-last with a contiguous last dimension; token_lengths
`[B, G]` int64; output `[B, T, D]` contiguous, dtype of sem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

BLOCK_T = 16
BLOCK_D = 128
NUM_WARPS = 4


@triton.jit
def _unmerge_kernel(
    sem_ptr,
    ac_ptr,
    ends_ptr,
    out_ptr,
    stride_sb,
    stride_sg,
    stride_ab,
    stride_ag,
    stride_eb,
    stride_ob,
    stride_ot,
    G,
    T,
    D,
    search_steps,
    HAS_AC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program writes frames `[t0, t0 + BLOCK_T)` of item `b`, all D channels.

    sem, ac `[B, G, D]` (last dim contiguous), ends `[B, G]` int64 (cumulative token
    lengths), out `[B, T, D]` (last dim contiguous). Grid: `(cdiv(T, BLOCK_T), B)`.
    The group of each frame is found by a vectorised binary search for the first g with
    `ends[b, g] > t` (`search_steps = bit_length(G)` halvings of `[0, G]`); g == G means
    past the item's end, and that frame is written as zeros.
    """
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    ends_row = ends_ptr + b * stride_eb
    lo = tl.zeros([BLOCK_T], dtype=tl.int32)
    hi = tl.zeros([BLOCK_T], dtype=tl.int32) + G
    for _ in range(search_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        end = tl.load(ends_row + mid, mask=active, other=0)
        right = end <= t
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    group = lo.to(tl.int64)
    row_ok = (group < G) & (t < T)
    out_rows = out_ptr + b * stride_ob + t.to(tl.int64)[:, None] * stride_ot
    sem_rows = sem_ptr + b * stride_sb + group[:, None] * stride_sg
    ac_rows = ac_ptr + b * stride_ab + group[:, None] * stride_ag
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        load_mask = row_ok[:, None] & (d < D)[None, :]
        value = tl.load(sem_rows + d[None, :], mask=load_mask, other=0.0)
        if HAS_AC:
            # The official order, acoustic + semantic; masked lanes are 0 + 0 = +0.
            value = tl.load(ac_rows + d[None, :], mask=load_mask, other=0.0) + value
        tl.store(out_rows + d[None, :], value, mask=(t < T)[:, None] & (d < D)[None, :])


def _check(sem, ac, token_lengths, T) -> None:
    if not isinstance(sem, torch.Tensor):
        raise TypeError(f"sem must be a torch.Tensor, got {type(sem).__name__}")
    if sem.dim() != 3:
        raise ValueError(f"sem must be [B, G, D], got shape {list(sem.shape)}")
    check_float_dtype("sem", sem)
    if ac is not None:
        if not isinstance(ac, torch.Tensor):
            raise TypeError(f"ac must be a torch.Tensor or None, got {type(ac).__name__}")
        if ac.shape != sem.shape:
            raise ValueError(f"ac must have sem's shape {list(sem.shape)}, got {list(ac.shape)}")
        if ac.dtype != sem.dtype:
            raise TypeError(f"ac must have sem's dtype {sem.dtype}, got {ac.dtype}")
        if ac.device != sem.device:
            raise ValueError(f"ac must be on {sem.device} like sem, got {ac.device}")
    if not isinstance(token_lengths, torch.Tensor):
        raise TypeError(f"token_lengths must be a torch.Tensor, got {type(token_lengths).__name__}")
    if tuple(token_lengths.shape) != tuple(sem.shape[:2]):
        raise ValueError(
            f"token_lengths must be [B, G] = {list(sem.shape[:2])}, got {list(token_lengths.shape)}"
        )
    if token_lengths.dtype != torch.int64:
        raise TypeError(f"token_lengths must be int64, got {token_lengths.dtype}")
    if token_lengths.device != sem.device:
        raise ValueError(
            f"token_lengths must be on {sem.device} like sem, got {token_lengths.device}"
        )
    if isinstance(T, bool) or not isinstance(T, int) or T < 0:
        raise ValueError(f"T must be an int >= 0, got {T!r}")


def unmerge_torch(
    sem: torch.Tensor, ac: torch.Tensor | None, token_lengths: torch.Tensor, T: int
) -> torch.Tensor:
    """Torch path: group of each frame by `searchsorted` on the cumulative lengths, then one
    gather from the per-group sums with a zero row appended for frames past the end.

    Summing per group before the gather gives the same bits as gathering both streams and
    summing per frame: every output element is the same single addition `ac + sem`.
    """
    batch, groups, dim = sem.shape
    summed = sem if ac is None else ac + sem
    padded = F.pad(summed, (0, 0, 0, 1))
    frames = torch.arange(T, device=sem.device).expand(batch, T).contiguous()
    group = torch.searchsorted(token_lengths.cumsum(1), frames, right=True)
    return padded.gather(1, group.unsqueeze(-1).expand(batch, T, dim))


def _launch(sem, ac, token_lengths, T) -> torch.Tensor:
    check_inner_contiguous(sem=sem, ac=ac)
    batch, groups, dim = sem.shape
    out = torch.empty(batch, T, dim, dtype=sem.dtype, device=sem.device)
    if out.numel() == 0:
        return out
    ends = token_lengths.cumsum(1)
    ac_arg = sem if ac is None else ac
    _unmerge_kernel[(triton.cdiv(T, BLOCK_T), batch)](
        sem,
        ac_arg,
        ends,
        out,
        sem.stride(0),
        sem.stride(1),
        ac_arg.stride(0),
        ac_arg.stride(1),
        ends.stride(0),
        out.stride(0),
        out.stride(1),
        groups,
        T,
        dim,
        groups.bit_length(),
        HAS_AC=ac is not None,
        BLOCK_T=BLOCK_T,
        BLOCK_D=BLOCK_D,
        num_warps=NUM_WARPS,
    )
    return out


@torch.library.custom_op("flexicodec_fast::unmerge", mutates_args=())
def _unmerge_op(
    sem: torch.Tensor, ac: torch.Tensor | None, token_lengths: torch.Tensor, T: int, backend: str
) -> torch.Tensor:
    if select_backend(backend, sem.device) == "triton":
        return _launch(sem, ac, token_lengths, T)
    return unmerge_torch(sem, ac, token_lengths, T)


@_unmerge_op.register_fake
def _(sem, ac, token_lengths, T, backend):
    return sem.new_empty(sem.shape[0], T, sem.shape[2])


def unmerge(
    sem: torch.Tensor,
    ac: torch.Tensor | None,
    token_lengths: torch.Tensor,
    T: int,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Repeat each group's `ac + sem` over its frames: `[B, G, D]` x2 -> `[B, T, D]`.

    sem, ac: `[B, G, D]` float (ac may be None); token_lengths: `[B, G]` int64 >= 0;
    T: output frames. Frames past an item's total are zero. backend: "auto" | "triton" |
    "torch". Registered as `torch.ops.flexicodec_fast.unmerge`. Not differentiable.
    """
    _check(sem, ac, token_lengths, T)
    select_backend(backend, sem.device)
    return _unmerge_op(sem, ac, token_lengths, T, backend)
