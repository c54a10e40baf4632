"""Snake activation, forward and backward (spec §9, design §3).

    y = x + (alpha + 1e-9)^-1 * sin(alpha * x)^2          x `[B, C, N]`, alpha `[1, C, 1]`

Backward, with u = alpha * x, s = sin(u), r = (alpha + 1e-9)^-1 and g the incoming gradient:

    grad_x     = g + (g r 2 s cos u) alpha
    grad_alpha = sum_{b,n} (g r 2 s cos u) x  -  sum_{b,n} (g s^2) r^2        `[1, C, 1]`

Numerics: the torch path is the reference expression itself (bit-identical on CPU). The
Triton kernels compute in fp32 in the reference's operation order with a correctly rounded
reciprocal (`div_rn`) and no FMA contraction, so on fp32 input the only difference from the
reference is the `sin` implementation (libdevice `sinf` on GPU, numpy's under the
interpreter). Half-precision inputs are computed in fp32 and rounded once on store (the
reference rounds after every operation). The output dtype is `promote_types(x, alpha)`.
"""

from __future__ import annotations

import torch

from ._checks import check_float_dtype, check_inner_contiguous
from ._triton import select_backend, tl, triton

BLOCK_N = 1024
NUM_WARPS = 4
# The backward keeps sin, cos and three operands live: 8 warps (4 samples a thread) keeps it
# free of spills on sm_90, where 4 warps spill.
BWD_NUM_WARPS = 8


@triton.jit
def _snake_fwd_kernel(
    x_ptr,
    alpha_ptr,
    y_ptr,
    stride_xb,
    stride_xc,
    stride_ac,
    stride_yb,
    stride_yc,
    C,
    N,
    num_blocks,
    BLOCK_N: tl.constexpr,
):
    """Snake forward over one block of `BLOCK_N` samples of one row `(b, c)`.

    x `[B, C, N]` (last dim contiguous), alpha `[1, C, 1]`, y `[B, C, N]` (last dim
    contiguous). Grid: `B * C * num_blocks` programs, flattened so a long signal cannot
    exceed the grid's second-axis limit.
    """
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_blocks
    b = row // C
    c = row % C
    offs = (pid % num_blocks).to(tl.int32) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    x = tl.load(x_ptr + b * stride_xb + c * stride_xc + offs, mask=mask).to(tl.float32)
    a = tl.load(alpha_ptr + c * stride_ac).to(tl.float32)
    # `div_rn`: `/` is an approximate division on GPU; the reference's reciprocal is exact.
    inv = tl.math.div_rn(1.0, a + 1e-9)
    s = tl.sin(a * x)
    y = x + inv * (s * s)
    tl.store(y_ptr + b * stride_yb + c * stride_yc + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _snake_bwd_kernel(
    g_ptr,
    x_ptr,
    alpha_ptr,
    gx_ptr,
    partial_ptr,
    stride_gb,
    stride_gc,
    stride_xb,
    stride_xc,
    stride_ac,
    stride_gxb,
    stride_gxc,
    C,
    N,
    num_blocks,
    BLOCK_N: tl.constexpr,
):
    """Snake backward over one block of `BLOCK_N` samples of one row `(b, c)`.

    g, x `[B, C, N]` (last dims contiguous), alpha `[1, C, 1]`; writes grad_x `[B, C, N]`
    and this block's share of grad_alpha to `partial[(b * C + c) * num_blocks + block]`
    (fp32), summed afterwards in a fixed order so the result is deterministic.
    """
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_blocks
    b = row // C
    c = row % C
    offs = (pid % num_blocks).to(tl.int32) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    g = tl.load(g_ptr + b * stride_gb + c * stride_gc + offs, mask=mask).to(tl.float32)
    x = tl.load(x_ptr + b * stride_xb + c * stride_xc + offs, mask=mask).to(tl.float32)
    a = tl.load(alpha_ptr + c * stride_ac).to(tl.float32)
    inv = tl.math.div_rn(1.0, a + 1e-9)
    u = a * x
    s = tl.sin(u)
    gu = g * inv * (2.0 * s) * tl.cos(u)
    gx = g + gu * a
    # Masked lanes loaded g = x = 0, so they add nothing to the sum.
    ga = gu * x - (g * (s * s)) * (inv * inv)
    tl.store(
        gx_ptr + b * stride_gxb + c * stride_gxc + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask
    )
    tl.store(partial_ptr + pid, tl.sum(ga, axis=0))


def _check(x: torch.Tensor, alpha: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    for name, t in (("x", x), ("alpha", alpha), ("grad_out", grad)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_float_dtype(name, t)
        if t.device != x.device:
            raise ValueError(f"{name} must be on {x.device} like x, got {t.device}")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, C, N], got shape {list(x.shape)}")
    if tuple(alpha.shape) != (1, x.shape[1], 1):
        raise ValueError(
            f"alpha must be [1, {x.shape[1]}, 1] for x of shape {list(x.shape)}, "
            f"got {list(alpha.shape)}"
        )
    if grad is not None:
        if grad.shape != x.shape:
            raise ValueError(
                f"grad_out must have x's shape {list(x.shape)}, got {list(grad.shape)}"
            )
        expected = torch.promote_types(x.dtype, alpha.dtype)
        if grad.dtype != expected:
            raise TypeError(
                f"grad_out must be {expected} (the forward's output dtype), got {grad.dtype}"
            )


def snake_torch(
    x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch path of the forward: the reference expression, bit-identical to it, evaluated
    in place in one buffer (`out`, or a new one) instead of five fresh tensors: on CPU the
    unfused expression spends most of its time allocating and zero-filling pages.

    Each in-place step is the reference's operation with its operands swapped, which does not
    change a single bit (products and sums of two floats commute).
    """
    return _snake_term(x, alpha, out).add_(x)


def _snake_term(x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`sin(alpha x)^2 / (alpha + 1e-9)`, the part of Snake added to x, computed in place in
    `out` (or a new tensor)."""
    inv = (alpha + 1e-9).reciprocal()
    y = torch.mul(alpha, x, out=out) if out is not None else alpha * x
    return y.sin_().pow_(2).mul_(inv)


def snake_backward_torch(grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor):
    """Torch path of the backward: `(grad_x, grad_alpha)`, in autograd's operation order."""
    inv = (alpha + 1e-9).reciprocal()
    u = alpha * x
    s = torch.sin(u)
    gu = grad * inv * (2 * s) * torch.cos(u)
    grad_x = grad + gu * alpha
    grad_alpha = (gu * x).sum((0, 2), keepdim=True) - (grad * s.pow(2)).sum(
        (0, 2), keepdim=True
    ) * (inv * inv)
    return grad_x.to(x.dtype), grad_alpha.to(alpha.dtype)


def _launch_forward(
    x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    check_inner_contiguous(x=x)
    batch, channels, n = x.shape
    # Each element is read before it is written by the same program, so `out` may be `x`.
    y = (
        out
        if out is not None
        else torch.empty(x.shape, dtype=torch.promote_types(x.dtype, alpha.dtype), device=x.device)
    )
    if y.numel() == 0:
        return y
    num_blocks = triton.cdiv(n, BLOCK_N)
    _snake_fwd_kernel[(batch * channels * num_blocks,)](
        x,
        alpha,
        y,
        x.stride(0),
        x.stride(1),
        alpha.stride(1),
        y.stride(0),
        y.stride(1),
        channels,
        n,
        num_blocks,
        BLOCK_N=BLOCK_N,
        num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    return y


def _launch_backward(grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor):
    check_inner_contiguous(grad_out=grad, x=x)
    batch, channels, n = x.shape
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(alpha)
    num_blocks = triton.cdiv(n, BLOCK_N)
    partial = torch.empty(batch, channels, num_blocks, dtype=torch.float32, device=x.device)
    _snake_bwd_kernel[(batch * channels * num_blocks,)](
        grad,
        x,
        alpha,
        grad_x,
        partial,
        grad.stride(0),
        grad.stride(1),
        x.stride(0),
        x.stride(1),
        alpha.stride(1),
        grad_x.stride(0),
        grad_x.stride(1),
        channels,
        n,
        num_blocks,
        BLOCK_N=BLOCK_N,
        num_warps=BWD_NUM_WARPS,
        enable_fp_fusion=False,
    )
    return grad_x, partial.sum((0, 2)).view(1, channels, 1).to(alpha.dtype)


@torch.library.custom_op("flexicodec_fast::snake", mutates_args=())
def _snake_op(x: torch.Tensor, alpha: torch.Tensor, backend: str) -> torch.Tensor:
    if select_backend(backend, x.device) == "triton":
        return _launch_forward(x, alpha)
    return snake_torch(x, alpha)


@_snake_op.register_fake
def _(x, alpha, backend):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, alpha.dtype))


@torch.library.custom_op("flexicodec_fast::snake_backward", mutates_args=())
def _snake_backward_op(
    grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if select_backend(backend, x.device) == "triton":
        return _launch_backward(grad, x, alpha)
    return snake_backward_torch(grad, x, alpha)


@_snake_backward_op.register_fake
def _(grad, x, alpha, backend):
    return torch.empty_like(x), torch.empty_like(alpha)


def _setup_context(ctx, inputs, output):
    x, alpha, backend = inputs
    ctx.save_for_backward(x, alpha)
    ctx.backend = backend


def _backward(ctx, grad):
    x, alpha = ctx.saved_tensors
    grad_x, grad_alpha = _snake_backward_op(grad.contiguous(), x, alpha, ctx.backend)
    return grad_x, grad_alpha, None


_snake_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("flexicodec_fast::snake_", mutates_args=("x", "scratch"))
def _snake_inplace_op(
    x: torch.Tensor, alpha: torch.Tensor, scratch: torch.Tensor | None, backend: str
) -> None:
    if select_backend(backend, x.device) == "triton":
        _launch_forward(x, alpha, out=x)
    else:
        x.add_(_snake_term(x, alpha, scratch))


@torch.library.custom_op("flexicodec_fast::snake_into", mutates_args=("out",))
def _snake_into_op(x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor, backend: str) -> None:
    if select_backend(backend, x.device) == "triton":
        check_inner_contiguous(out=out)
        _launch_forward(x, alpha, out=out)
    else:
        snake_torch(x, alpha, out=out)


def _check_buffer(name: str, buffer: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor):
    """A caller's buffer for Snake of x: x's shape and device, the result's dtype, and
    sharing no memory with x (the torch path reads x after writing the buffer)."""
    dtype = torch.promote_types(x.dtype, alpha.dtype)
    if buffer.shape != x.shape or buffer.dtype != dtype or buffer.device != x.device:
        raise ValueError(
            f"{name}: expected {tuple(x.shape)} {dtype} on {x.device}, got "
            f"{tuple(buffer.shape)} {buffer.dtype} on {buffer.device}"
        )
    if buffer.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError(f"{name}: must not share memory with x")


def snake_(
    x: torch.Tensor,
    alpha: torch.Tensor,
    *,
    scratch: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """In-place Snake for inference: overwrites and returns `x` (`[B, C, N]`, alpha's dtype
    or wider). Same values as `snake`; not differentiable. scratch: a buffer of x's shape
    that the torch path uses for its one temporary (allocated when None), so that loops over
    same-shaped activations touch no fresh pages; its contents are overwritten."""
    _check(x, alpha)
    select_backend(backend, x.device)
    if torch.promote_types(x.dtype, alpha.dtype) != x.dtype:
        raise TypeError(
            f"snake_ writes into x: x's dtype {x.dtype} cannot hold the result of "
            f"alpha's {alpha.dtype}; use snake()"
        )
    if scratch is not None:
        _check_buffer("scratch", scratch, x, alpha)
    _snake_inplace_op(x, alpha, scratch, backend)
    return x


def snake_into(
    x: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Snake of x (`[B, C, N]`) written into the caller's `out` (x's shape, the result's
    dtype, any strides with a unit-stride last dim on the Triton path) and returned: for
    inference loops that reuse one buffer. Same values as `snake`; not differentiable."""
    _check(x, alpha)
    select_backend(backend, x.device)
    _check_buffer("out", out, x, alpha)
    _snake_into_op(x, alpha, out, backend)
    return out


def snake(x: torch.Tensor, alpha: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Snake `x + sin(alpha x)^2 / (alpha + 1e-9)`, differentiable in x and alpha.

    x: `[B, C, N]` float32/float16/bfloat16; alpha: `[1, C, 1]`. Returns `[B, C, N]` of dtype
    `promote_types(x, alpha)`. backend: "auto" | "triton" | "torch" (see `_triton`).
    Registered as `torch.ops.flexicodec_fast.snake` (backward: `snake_backward`).
    """
    _check(x, alpha)
    select_backend(backend, x.device)
    return _snake_op(x, alpha, backend)


def snake_backward(
    grad_out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients `(grad_x [B, C, N], grad_alpha [1, C, 1])` of `snake` given `grad_out`."""
    _check(x, alpha, grad_out)
    select_backend(backend, x.device)
    return _snake_backward_op(grad_out, x, alpha, backend)
