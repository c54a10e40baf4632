"""FSQ kernels (kernels/fsq.py) vs `reference.fsq.FSQ`.

The torch path is the reference's arithmetic: codes and outputs are bit-identical. The Triton
kernel reduces project-in in another order and builds tanh from exp, so a bounded value
within ~1e-6 * half_l of a half-integer may round the other way (design §4): codes are
compared exactly on tokens away from such near-ties (all but a handful), and
`test_near_ties_are_the_only_source_of_disagreement` constructs near-ties on purpose. The
dequantised vector is element-wise exact given equal codes (checked through an identity
project-out); outputs are fp32 reductions, judged by tests/tolerances.py.
"""

import itertools
import math

import pytest
import torch
from tolerances import NEAR_TIE, assert_elementwise, assert_rounded_from

from flexicodec_fast.kernels import fsq as fsq_mod
from flexicodec_fast.kernels.fsq import fsq, fsq_decode
from flexicodec_fast.reference.fsq import FSQ

BACKENDS = ["torch", "triton"]
LEVELS = {
    "released_8x5": [8, 8, 8, 8, 8],
    "odd_levels": [7, 5, 5, 5],
    "inexact_digits_L26": [26, 3, 4],  # (r / 13) * 13 + 13 is not an integer in fp32
    "eight_levels": [2, 3, 4, 5, 6, 7, 8, 9],
    "one_level": [5],
}


def _module(levels, dim=48, seed=0, spread=3.0):
    torch.manual_seed(seed)
    module = FSQ(levels, dim).eval()
    with torch.no_grad():  # spread z over the whole range of the bound
        module.project_in.weight.mul_(spread)
    return module


def _weights(module, dtype=torch.float32):
    return tuple(
        p.detach().to(dtype)
        for p in (
            module.project_in.weight,
            module.project_in.bias,
            module.project_out.weight,
            module.project_out.bias,
        )
    )


def _tie_distance(module, x):
    """Distance of each token's bounded values to the nearest half-integer, `[B, G]` (min
    over levels), in units of half_l (the scale of the kernel's tanh error)."""
    with torch.no_grad():
        bounded = module.bound(module.project_in(x).float())
    half = (module.levels - 1) * (1 - 1e-3) / 2  # the FSQ bound's definition (spec)
    frac = bounded - bounded.floor()
    return ((frac - 0.5).abs() / half.clamp(min=1)).min(dim=-1).values


def _reference(module, x):
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LEVELS))
@pytest.mark.parametrize("shape", [(2, 37), (1, 1), (3, 16)])
def test_matches_reference(backend, name, shape):
    module = _module(LEVELS[name])
    x = torch.randn(*shape, 48, generator=torch.Generator().manual_seed(1))
    ref_out, ref_codes = _reference(module, x)
    out, codes = fsq(x, *_weights(module), LEVELS[name], backend=backend)
    assert codes.dtype == torch.int32 and out.dtype == torch.float32
    if backend == "torch":
        assert torch.equal(codes, ref_codes) and torch.equal(out, ref_out)
        return
    far = _tie_distance(module, x) > NEAR_TIE
    assert far.float().mean() > 0.9
    assert torch.equal(codes[far], ref_codes[far])
    assert_elementwise(out[far], ref_out[far], "reduction", backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LEVELS))
def test_decode_matches_reference(backend, name):
    levels = LEVELS[name]
    module = _module(levels)
    size = math.prod(levels)
    codes = torch.randint(
        0, size, (2, 37), generator=torch.Generator().manual_seed(2), dtype=torch.int32
    )
    with torch.no_grad():
        expected = module.from_indices(codes)
    *_, w_out, b_out = _weights(module)
    out = fsq_decode(codes, w_out, b_out, levels, backend=backend)
    if backend == "torch":
        assert torch.equal(out, expected)
    else:
        assert_elementwise(out, expected, "reduction", backend)
    assert torch.equal(fsq_decode(codes.long(), w_out, b_out, levels, backend=backend), out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LEVELS))
def test_dequantised_values_exact(backend, name):
    """With W_out = [I; 0] and no bias the output's first n columns are the dequantised
    codes themselves: equal, element for element, to the reference's."""
    levels = LEVELS[name]
    n, dim = len(levels), 48
    module = _module(levels)
    w_in, b_in, _, _ = _weights(module)
    eye = torch.zeros(dim, n)
    eye[:n] = torch.eye(n)
    x = torch.randn(2, 37, dim, generator=torch.Generator().manual_seed(3))
    out, codes = fsq(x, w_in, b_in, eye, torch.zeros(dim), levels, backend=backend)
    assert torch.equal(out[..., :n], module.indices_to_codes(codes))
    assert not out[..., n:].any()
    decoded = fsq_decode(codes, eye, torch.zeros(dim), levels, backend=backend)
    assert torch.equal(decoded, out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_inputs(backend):
    """Half inputs and weights are computed in fp32 from the half values: the codes are the
    fp32 reference's on the upcast values (away from near-ties)."""
    levels = LEVELS["released_8x5"]
    module = _module(levels)
    weights16 = _weights(module, torch.float16)
    x16 = torch.randn(3, 21, 48, generator=torch.Generator().manual_seed(4)).half()
    upcast = FSQ(levels, 48).eval()
    with torch.no_grad():
        for p, w in zip(
            (
                upcast.project_in.weight,
                upcast.project_in.bias,
                upcast.project_out.weight,
                upcast.project_out.bias,
            ),
            weights16,
            strict=True,
        ):
            p.copy_(w.float())
    ref_out, ref_codes = _reference(upcast, x16.float())
    out, codes = fsq(x16, *weights16, levels, backend=backend)
    assert out.dtype == torch.float16
    far = _tie_distance(upcast, x16.float()) > NEAR_TIE
    assert torch.equal(codes[far], ref_codes[far])
    assert_rounded_from(out[far], ref_out[far], "reduction", backend)


def test_bf16_torch_path():
    # bf16 stores truncate under the interpreter (design §5); bf16 is compiled in test_aot.
    levels = LEVELS["odd_levels"]
    module = _module(levels)
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(5)).bfloat16()
    ref_out, ref_codes = _reference(module, x.float())
    out, codes = fsq(x, *_weights(module), levels, backend="torch")
    assert out.dtype == torch.bfloat16 and torch.equal(codes, ref_codes)
    assert torch.equal(out, ref_out.bfloat16())


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_are_the_only_source_of_disagreement(backend):
    """z chosen so the bounded values sit at k + 0.5 + delta for deltas from 1e-8 to 1e-2:
    tokens within 1e-6 * half_l of a half-integer may get either code, all others agree."""
    levels = [8, 8]
    dim = 4
    module = FSQ(levels, dim).eval()
    with torch.no_grad():
        module.project_in.weight.copy_(torch.eye(2, dim))
        module.project_in.bias.zero_()
    half = 3.4965
    offset, shift = 0.5, math.tan(0.5 / half)
    gen = torch.Generator().manual_seed(6)
    deltas = torch.tensor(
        [0.0, 1e-8, -1e-8, 1e-7, -1e-7, 3e-7, -3e-7, 1e-6, -1e-6, 1e-4, -1e-4, 1e-2, -1e-2]
    )
    k = torch.randint(-4, 3, (4, len(deltas), 2), generator=gen).float()
    target = (k + 0.5 + deltas.view(1, -1, 1)).clamp(-3.99, 2.99)
    z = torch.atanh((target + offset) / half) - shift
    x = torch.cat([z, torch.randn(4, len(deltas), dim - 2, generator=gen)], dim=-1)
    ref_out, ref_codes = _reference(module, x)
    out, codes = fsq(x, *_weights(module), levels, backend=backend)
    distance = _tie_distance(module, x)
    near = distance < NEAR_TIE
    assert near.any() and (~near).any()
    assert torch.equal(codes[~near], ref_codes[~near])
    if backend == "torch":
        assert torch.equal(codes, ref_codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_round_half_to_even(backend):
    """Bounded values exactly on a half-integer in fp32, on every path: tanh is exactly 0 at
    z = -shift and exactly +-1 once saturated (z = +-20), so the bounded value is `-off`
    (-0.5 for even L) or `+-half - off` (+-499.5 for L = 1001, whose half is exactly
    1000 * 0.999 / 2 = 499.5 in fp32). Half-to-even gives 0 and +-500 there; half-up would
    give -499 and half-away-from-zero -1. The identity project-in makes z_j = x_j exactly."""
    levels = [1001, 8, 6]
    n, dim = len(levels), 16
    module = FSQ(levels, dim).eval()
    with torch.no_grad():
        module.project_in.weight.copy_(torch.eye(n, dim))
        module.project_in.bias.zero_()
    half = (module.levels - 1) * (1 - 1e-3) / 2  # the FSQ bound's definition (spec)
    shift = (torch.where(module.levels % 2 == 0, 0.5, 0.0) / half).tan()
    assert half[0] == 499.5 and shift[0] == 0
    # Per level: (z, the rounded value it must give, whether the bounded value is a tie).
    choices = [
        [(20.0, 500, True), (-20.0, -500, True), (0.0, 0, False)],
        [(-float(shift[1]), 0, True), (20.0, 3, False), (-20.0, -4, False)],
        [(-float(shift[2]), 0, True), (-20.0, -3, False)],
    ]
    rows = list(itertools.product(*choices))
    z, rounded, tie = (torch.tensor([[c[i] for c in row] for row in rows]) for i in range(3))
    gen = torch.Generator().manual_seed(7)
    x = torch.cat([z, torch.randn(len(rows), dim - n, generator=gen)], dim=-1)[None]
    with torch.no_grad():
        bounded = module.bound(module.project_in(x).float())[0]
    assert torch.equal(bounded - bounded.floor() == 0.5, tie)
    ref_out, ref_codes = _reference(module, x)
    assert torch.equal(module.indices_to_codes(ref_codes)[0] * (module.levels // 2), rounded)
    eye = torch.zeros(dim, n)
    eye[:n] = torch.eye(n)
    w_in, b_in, _, _ = _weights(module)
    out, codes = fsq(x, w_in, b_in, eye, torch.zeros(dim), levels, backend=backend)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(out[0, :, :n] * (module.levels // 2), rounded)


def test_constants_are_the_references():
    levels = (8, 5, 26, 3)
    ftab, itab = fsq_mod._tables(levels, torch.device("cpu"))
    module = FSQ(list(levels), 16)
    half = (module.levels - 1) * (1 - 1e-3) / 2  # the FSQ bound's definition (spec)
    offset = torch.where(module.levels % 2 == 0, 0.5, 0.0)
    assert torch.equal(ftab[0, :4], (offset / half).tan())
    assert torch.equal(ftab[1, :4], half) and torch.equal(ftab[2, :4], offset)
    assert torch.equal(itab[2, :4], module.basis.long())
    assert ftab.shape == (5, 4) and itab.shape == (3, 4)


def test_opcheck():
    module = _module(LEVELS["released_8x5"])
    x = torch.randn(2, 5, 48)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.fsq.default,
        (x, *_weights(module), LEVELS["released_8x5"], "torch"),
    )
    codes = torch.randint(0, 8**5, (2, 5), dtype=torch.int32)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.fsq_decode.default,
        (codes, *_weights(module)[2:], LEVELS["released_8x5"], "torch"),
    )


def test_errors():
    levels = LEVELS["released_8x5"]
    module = _module(levels)
    w_in, b_in, w_out, b_out = _weights(module)
    x = torch.randn(2, 5, 48)
    with pytest.raises(ValueError, match=r"levels must be 1 to 8 ints >= 2, got \[8, 1\]"):
        fsq(x, w_in[:2], b_in[:2], w_out[:, :2], b_out, [8, 1])
    with pytest.raises(ValueError, match="levels must be 1 to 8 ints"):
        fsq(x, w_in, b_in, w_out, b_out, [2] * 9)
    with pytest.raises(ValueError, match="more than int32 codes hold"):
        fsq(x, w_in, b_in, w_out, b_out, [2**16, 2**16])
    with pytest.raises(ValueError, match=r"x must be a \[B, G, dim\] tensor, got torch.Size"):
        fsq(x[0], w_in, b_in, w_out, b_out, levels)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16, got torch.int64"):
        fsq(x.long(), w_in, b_in, w_out, b_out, levels)
    with pytest.raises(ValueError, match=r"w_in must be of shape \[5, 48\], got \[5, 47\]"):
        fsq(x, w_in[:, :47], b_in, w_out, b_out, levels)
    with pytest.raises(ValueError, match=r"w_out must be of shape \[48, 5\], got \[48, 4\]"):
        fsq(x, w_in, b_in, w_out[:, :4], b_out, levels)
    with pytest.raises(TypeError, match="codes must be int32 or int64, got torch.float32"):
        fsq_decode(torch.zeros(2, 5), w_out, b_out, levels)
    with pytest.raises(ValueError, match=r"codes must be \[B, G\], got shape \[2, 1, 5\]"):
        fsq_decode(torch.zeros(2, 1, 5, dtype=torch.int32), w_out, b_out, levels)
    with pytest.raises(ValueError, match="x must have a contiguous last dimension"):
        fsq(
            x.transpose(1, 2).contiguous().transpose(1, 2),
            w_in,
            b_in,
            w_out,
            b_out,
            levels,
            backend="triton",
        )
