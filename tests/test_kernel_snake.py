"""Snake kernel (kernels/snake.py): torch path and Triton kernel (interpreter) vs the reference.

Bit-identity rules (design §4): the torch path is bit-identical to `reference.snake.snake`.
The interpreter computes `sin` with numpy, whose float32 sin differs from torch's (SLEEF) by
at most 1 ulp; its output is bit-identical to the reference expression evaluated with numpy's
sin, which pins the sin implementation as the only difference.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from tolerances import assert_elementwise, assert_same_precision

from flexicodec_fast.kernels.snake import snake, snake_, snake_backward, snake_into, snake_torch
from flexicodec_fast.reference.snake import snake as reference_snake

SHAPES = [(1, 1, 1), (2, 3, 7), (1, 2, 1023), (2, 2, 2100), (3, 1, 1024)]


def _inputs(shape, dtype=torch.float32, alpha_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    alpha = (torch.rand(1, shape[1], 1, generator=gen) * 2 + 0.05).to(alpha_dtype or dtype)
    return x, alpha


def _snake_numpy_sin(x, alpha):
    """The reference expression with numpy's float32 sin (what the interpreter evaluates)."""
    s = torch.from_numpy(np.sin((alpha * x).numpy()))
    return x + (alpha + 1e-9).reciprocal() * s.pow(2)  # 1e-9: Snake's definition (spec)


def _spacing(v: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each float32 value."""
    return torch.nextafter(v.abs(), torch.tensor(float("inf"))) - v.abs()


def _ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance between a and b in units in the last place of b (float32)."""
    return ((a - b).abs() / _spacing(b)).max().item()


def _snake_ulps(out, x, alpha) -> float:
    """Error of `out` in ulps of the two rounded quantities it is made of: the term
    `r sin^2` (whose sin carries the difference) and the result `y` (x + term may cancel)."""
    ref = reference_snake(x, alpha)
    term = (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)  # Snake's eps (spec)
    return ((out - ref).abs() / (_spacing(term) + _spacing(ref))).max().item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float32, None),
        (torch.float16, None),
        (torch.bfloat16, None),
        (torch.float16, torch.float32),
    ],
)
def test_torch_path_bit_identical(shape, dtypes):
    x, alpha = _inputs(shape, *dtypes)
    out = snake(x, alpha, backend="torch")
    ref = reference_snake(x, alpha)
    assert out.dtype == ref.dtype
    assert torch.equal(out, ref)
    assert torch.equal(snake(x, alpha), ref)  # "auto" on CPU is the torch path


@pytest.mark.parametrize("shape", SHAPES)
def test_triton_forward_fp32(shape):
    x, alpha = _inputs(shape)
    out = snake(x, alpha, backend="triton")
    ref = reference_snake(x, alpha)
    assert torch.equal(out, _snake_numpy_sin(x, alpha))
    # numpy's and torch's sin differ by <= 1 ulp; through y = x + r s^2 that stays small.
    u = alpha * x
    assert _ulps(torch.from_numpy(np.sin(u.numpy())), torch.sin(u)) <= 1.0
    assert _snake_ulps(out, x, alpha) <= 4.0
    assert out.dtype == ref.dtype


def test_triton_forward_fp32_bound_on_many_values():
    x, alpha = _inputs((2, 8, 4000), seed=1)
    out = snake(x, alpha, backend="triton")
    ref = reference_snake(x, alpha)
    assert _snake_ulps(out, x, alpha) <= 4.0  # measured: 2.67 at most over 4 seeds
    mismatched = (out != ref).float().mean().item()
    assert mismatched < 0.1  # measured: about 4-5 % of elements differ


@pytest.mark.parametrize("alpha_dtype", [torch.float16, torch.float32])
def test_triton_forward_fp16_rounds_once(alpha_dtype):
    x, alpha = _inputs((2, 3, 300), torch.float16, alpha_dtype)
    out = snake(x, alpha, backend="triton")
    expected = _snake_numpy_sin(x.float(), alpha.float()).to(out.dtype)
    assert out.dtype == torch.promote_types(x.dtype, alpha_dtype)
    assert torch.equal(out, expected)
    ref = reference_snake(x, alpha)
    truth = reference_snake(x.double(), alpha.double())
    assert_same_precision(out, ref, truth, "snake", "triton", "fp16")
    assert_elementwise(out.float(), ref.float(), "snake", "triton", "fp16", ref.float().abs().max())


def test_non_contiguous_outer_strides():
    x, alpha = _inputs((4, 3, 40))
    view = x[::2]  # batch stride doubled, rows still contiguous
    out = snake(view, alpha, backend="triton")
    assert torch.equal(out, _snake_numpy_sin(view.contiguous(), alpha))


@pytest.mark.parametrize(
    "backend, channels_last", [("torch", False), ("torch", True), ("triton", False)]
)
def test_inplace_and_into_buffer_variants(backend, channels_last):
    """`snake_` (with and without a scratch buffer) and `snake_into` compute what `snake`
    computes, bit for bit, on rows of unit stride and (torch path) on the conv stacks'
    channels-last activations."""
    x, alpha = _inputs((2, 3, 300), seed=3)
    if channels_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    want = snake(x, alpha, backend=backend)
    scratch, out = torch.empty_like(x), torch.empty_like(x)
    assert torch.equal(snake_(x.clone(), alpha, backend=backend), want)
    inplace = snake_(x.clone(), alpha, scratch=scratch, backend=backend)
    assert torch.equal(inplace, want)
    assert snake_into(x, alpha, out, backend=backend) is out
    assert torch.equal(out, want)


def test_buffer_errors():
    x, alpha = _inputs((2, 3, 10))
    with pytest.raises(ValueError, match=r"scratch: expected \(2, 3, 10\) torch.float32"):
        snake_(x, alpha, scratch=torch.empty(2, 3, 9))
    with pytest.raises(ValueError, match="out: must not share memory with x"):
        snake_into(x, alpha, x)
    with pytest.raises(
        ValueError,
        match=r"expected \(2, 3, 10\) torch.float32 on cpu, got \(2, 3, 10\) torch.float16",
    ):
        snake_into(x, alpha, x.half())
    strided = torch.empty(2, 10, 3).transpose(1, 2)
    with pytest.raises(ValueError, match="out must have a contiguous last dimension"):
        snake_into(x, alpha, strided, backend="triton")
    half = x.half()
    before = half.clone()
    with pytest.raises(TypeError, match="snake_ writes into x"):
        snake_(half, alpha)
    assert torch.equal(half, before)  # nothing half-written


def _autograd_reference(x, alpha, grad):
    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    reference_snake(xr, ar).backward(grad)
    return xr.grad, ar.grad


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (2, 2, 2100)])
def test_backward_torch_path(shape):
    x, alpha = _inputs(shape)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    gx_ref, ga_ref = _autograd_reference(x, alpha, grad)
    gx, ga = snake_backward(grad, x, alpha, backend="torch")
    assert torch.equal(gx, gx_ref)  # same operations in the same order as autograd
    assert_elementwise(ga, ga_ref, "alpha_gradient", "torch")


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (2, 2, 2100)])
def test_backward_triton(shape):
    x, alpha = _inputs(shape)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    gx_ref, ga_ref = _autograd_reference(x, alpha, grad)
    gx, ga = snake_backward(grad, x, alpha, backend="triton")
    assert_elementwise(gx, gx_ref, "gradient", "triton")
    assert_elementwise(ga, ga_ref, "alpha_gradient", "triton", atol_scale=ga_ref.abs().max())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_autograd_through_op(backend):
    x, alpha = _inputs((2, 3, 50))
    grad = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(2))
    gx_ref, ga_ref = _autograd_reference(x, alpha, grad)
    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    snake(xr, ar, backend=backend).backward(grad)
    assert_elementwise(xr.grad, gx_ref, "gradient", backend)
    assert_elementwise(ar.grad, ga_ref, "alpha_gradient", backend)


def test_empty_and_opcheck():
    x, alpha = _inputs((2, 3, 0))
    assert snake(x, alpha, backend="triton").shape == (2, 3, 0)
    gx, ga = snake_backward(x, x, alpha, backend="triton")
    assert gx.shape == x.shape and torch.equal(ga, torch.zeros_like(alpha))
    x, alpha = _inputs((2, 3, 20))
    torch.library.opcheck(torch.ops.flexicodec_fast.snake.default, (x, alpha, "torch"))
    x.requires_grad_()
    torch.library.opcheck(
        torch.ops.flexicodec_fast.snake.default,
        (x, alpha, "torch"),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    x = x.detach()
    for op, args in (
        (torch.ops.flexicodec_fast.snake_.default, (x.clone(), alpha, torch.empty_like(x))),
        (torch.ops.flexicodec_fast.snake_.default, (x.clone(), alpha, None)),
        (torch.ops.flexicodec_fast.snake_into.default, (x, alpha, torch.empty_like(x))),
    ):
        torch.library.opcheck(op, (*args, "torch"), test_utils=("test_schema", "test_faketensor"))


def test_compiles_with_torch_compile():
    x, alpha = _inputs((2, 3, 20))
    compiled = torch.compile(
        lambda a, b: snake(a, b, backend="torch") * 2, backend="eager", fullgraph=True
    )
    assert torch.equal(compiled(x, alpha), reference_snake(x, alpha) * 2)


def test_errors():
    x, alpha = _inputs((2, 3, 10))
    with pytest.raises(ValueError, match=r"x must be \[B, C, N\]"):
        snake(x[0], alpha)
    with pytest.raises(ValueError, match=r"alpha must be \[1, 3, 1\]"):
        snake(x, alpha.view(3))
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16, got torch.int"):
        snake(x.int(), alpha)
    with pytest.raises(TypeError, match="alpha must be a torch.Tensor, got float"):
        snake(x, 1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        snake(x, alpha, backend="cuda")
    with pytest.raises(ValueError, match="x must have a contiguous last dimension"):
        snake(x.transpose(1, 2).contiguous().transpose(1, 2), alpha, backend="triton")
    with pytest.raises(ValueError, match="grad_out must have x's shape"):
        snake_backward(x[:, :, :5], x, alpha)
    with pytest.raises(TypeError, match="grad_out must be torch.float32"):
        snake_backward(x.half(), x, alpha)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    x, alpha = _inputs((1, 1, 4))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs the Triton interpreter"):
        snake(x, alpha, backend="triton")


def test_torch_function_is_the_reference_expression():
    x, alpha = _inputs((1, 2, 3))
    assert torch.equal(snake_torch(x, alpha), reference_snake(x, alpha))


def test_kernel_modules_work_without_triton():
    """Triton is optional: with it unimportable, the modules import and the torch paths run."""
    code = """
import sys
sys.modules["triton"] = None  # makes `import triton` raise ImportError
import torch
from flexicodec_fast.kernels import _triton, attention, snake, unmerge
assert not _triton.HAS_TRITON
x = torch.randn(1, 2, 5)
alpha = torch.ones(1, 2, 1)
assert snake.snake(x, alpha).shape == x.shape
sem = torch.randn(1, 2, 4)
assert unmerge.unmerge(sem, None, torch.tensor([[1, 2]]), 3).shape == (1, 3, 4)
q = torch.randn(1, 1, 3, 16)
assert attention.attention(q, q, q).shape == (1, 3, 16)
try:
    snake.snake(x, alpha, backend="triton")
except ValueError as err:
    assert "needs the `triton` package" in str(err)
else:
    raise AssertionError("backend='triton' without triton must raise")
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
