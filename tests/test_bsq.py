"""BSQ: `reference.bsq` against the formula written out, and `kernels.bsq` against it.

Codes are compared exactly on every path (reference, torch path, Triton under the
interpreter): the inputs are checked to have no coordinate within 1e-4 of 0, so the
project-in reduction order cannot flip a sign (design §4), and
`test_near_ties_are_the_only_source_of_disagreement` builds such coordinates on purpose.
"""

import itertools
import math

import pytest
import torch
from tolerances import NEAR_TIE, assert_elementwise, assert_rounded_from

from flexicodec_fast.kernels.bsq import bsq, bsq_decode
from flexicodec_fast.reference.bsq import BSQ, BSQWrapper

BACKENDS = ["torch", "triton"]
DIM = 24


pytestmark = pytest.mark.usefixtures("one_thread")


def _module(bits, dim=DIM, seed=0, **options):
    torch.manual_seed(seed)
    return BSQ(bits, dim, **options).eval()


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


def _x(*shape, seed=1):
    return torch.randn(*shape, DIM, generator=torch.Generator().manual_seed(seed))


def _min_abs_z(module, x):
    with torch.no_grad():
        return module.project_in(x).abs().min().item()


@pytest.mark.parametrize("bits", [1, 3, 13])
def test_reference_is_the_formula(bits):
    """Per token, in plain Python: bit_j = [z_j >= 0], index = sum bit_j 2^j, corner
    c_j = (2 bit_j - 1) / sqrt(L), out = W_out c + b_out."""
    module = _module(bits)
    x = _x(2, 5)
    with torch.no_grad():
        out, codes = module(x)
        z = x @ module.project_in.weight.t() + module.project_in.bias
    w_out, b_out = module.project_out.weight.detach(), module.project_out.bias.detach()
    for b, g in itertools.product(range(2), range(5)):
        bit = [1 if float(v) >= 0 else 0 for v in z[b, g]]
        assert int(codes[b, g]) == sum(v << j for j, v in enumerate(bit))
        corner = torch.tensor([(2 * v - 1) / math.sqrt(bits) for v in bit])
        assert_elementwise(out[b, g], w_out @ corner + b_out, "reduction", "reference")
    assert codes.dtype == torch.int32 and module.codebook_size == 2**bits


def test_index_round_trip_over_the_whole_codebook():
    module = _module(5)
    every = torch.arange(32)
    corners = module.indices_to_codes(every)
    assert set(corners.unique().tolist()) == {-module.scale, module.scale}
    assert torch.equal(module.codes_to_indices(corners), every.int())
    # Bit 0 is coordinate 0: index 1 is the corner (+, -, -, -, -).
    assert (corners[1] > 0).tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_sign_of_zero_is_positive(backend):
    """z_j = +0 and -0 both give bit 1: with W_in = [I | 0] and no bias, z is x exactly."""
    bits = 4
    module = _module(bits)
    with torch.no_grad():
        module.project_in.weight.copy_(torch.eye(bits, DIM))
        module.project_in.bias.zero_()
    x = torch.zeros(1, 3, DIM)
    x[0, 1, :bits] = -0.0
    x[0, 2, :bits] = torch.tensor([-1.0, 0.0, -0.0, 2.0])
    if backend == "reference":
        with torch.no_grad():
            _, codes = module(x)
    else:
        _, codes = bsq(x, *_weights(module), backend=backend)
    assert codes.tolist() == [[15, 15, 0b1110]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [1, 5, 13, 20])
@pytest.mark.parametrize("shape", [(2, 37), (1, 1)])
def test_kernel_matches_reference(backend, bits, shape):
    module = _module(bits)
    x = _x(*shape)
    # 100 x NEAR_TIE from every sign decision: codes must be equal everywhere
    assert _min_abs_z(module, x) > 1e-4
    with torch.no_grad():
        ref_out, ref_codes = module(x)
    out, codes = bsq(x, *_weights(module), backend=backend)
    assert codes.dtype == torch.int32 and torch.equal(codes, ref_codes)
    if backend == "torch":
        assert torch.equal(out, ref_out)
    else:
        assert_elementwise(out, ref_out, "reduction", backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [3, 13])
def test_decode_matches_reference(backend, bits):
    module = _module(bits)
    codes = torch.randint(0, 2**bits, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module.from_indices(codes)
    _, _, w_out, b_out = _weights(module)
    out = bsq_decode(codes.int(), w_out, b_out, backend=backend)
    if backend == "torch":
        assert torch.equal(out, expected)
    else:
        assert_elementwise(out, expected, "reduction", backend)
    assert torch.equal(bsq_decode(codes, w_out, b_out, backend=backend), out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dequantised_values_exact(backend):
    """With W_out = [I; 0] and no bias the first L output columns are the corner itself:
    `+-fp32(1/sqrt(L))`, equal bit for bit to the reference's decode of the same index."""
    bits = 7
    module = _module(bits)
    w_in, b_in, _, _ = _weights(module)
    eye = torch.zeros(DIM, bits)
    eye[:bits] = torch.eye(bits)
    x = _x(2, 19, seed=3)
    out, codes = bsq(x, w_in, b_in, eye, torch.zeros(DIM), backend=backend)
    assert torch.equal(out[..., :bits], module.indices_to_codes(codes))
    assert not out[..., bits:].any()
    assert torch.equal(bsq_decode(codes, eye, torch.zeros(DIM), backend=backend), out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_are_the_only_source_of_disagreement(backend):
    """Tokens moved so that z_0 = delta for deltas from 1e-9 to 1e-2: codes may differ only
    where the reference's |z_0| is within 1e-6; the torch path never differs."""
    bits = 6
    module = _module(bits)
    w0 = module.project_in.weight[0].detach()
    b0 = module.project_in.bias[0].detach()
    deltas = torch.tensor([0.0, 1e-9, -1e-9, 1e-7, -1e-7, 1e-6, -1e-6, 1e-4, -1e-4, 1e-2, -1e-2])
    x = _x(4, len(deltas), seed=4)
    z0 = x @ w0 + b0
    x = x + ((deltas - z0) / w0.dot(w0)).unsqueeze(-1) * w0
    with torch.no_grad():
        _, ref_codes = module(x)
        near = module.project_in(x)[..., 0].abs() <= NEAR_TIE
    _, codes = bsq(x, *_weights(module), backend=backend)
    assert near.any() and (~near).any()
    assert torch.equal(codes[~near], ref_codes[~near])
    if backend == "torch":
        assert torch.equal(codes, ref_codes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_inputs(backend):
    """Half inputs and weights are computed in fp32 from the half values."""
    bits = 13
    module = _module(bits)
    weights16 = _weights(module, torch.float16)
    upcast = BSQ(bits, DIM).eval()
    with torch.no_grad():
        for p, w in zip(upcast.parameters(), weights16, strict=True):
            p.copy_(w.float())
    x16 = _x(2, 9, seed=5).half()
    assert _min_abs_z(upcast, x16.float()) > 1e-4  # 100 x NEAR_TIE, as above
    with torch.no_grad():
        ref_out, ref_codes = upcast(x16.float())
    out, codes = bsq(x16, *weights16, backend=backend)
    assert out.dtype == torch.float16 and torch.equal(codes, ref_codes)
    assert_rounded_from(out, ref_out, "reduction", backend)


def test_bf16_torch_path():
    bits = 5
    module = _module(bits)
    x = _x(2, 9, seed=6).bfloat16()
    with torch.no_grad():
        ref_out, ref_codes = module(x.float())
    out, codes = bsq(x, *_weights(module), backend="torch")
    assert out.dtype == torch.bfloat16 and torch.equal(codes, ref_codes)
    assert torch.equal(out, ref_out.bfloat16())


def test_straight_through_gradient():
    """The gradient reaching x is the one of `project_out(u)`: the sign is skipped."""
    module = _module(8).train()
    x = _x(2, 7).requires_grad_()
    g = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(7))
    (module(x)[0] * g).sum().backward()
    soft = x.detach().clone().requires_grad_()
    (module.project_out(module.sphere(soft)[1]) * g).sum().backward()
    assert x.grad.abs().sum() > 0
    assert_elementwise(x.grad, soft.grad, "straight_through", "reference")


def _exact_entropies(module, x):
    """Per-token entropy and codebook-usage entropy of `q(c|u) ∝ exp(tau c.u)` over all 2^L
    corners, enumerated."""
    corners = module.indices_to_codes(torch.arange(module.codebook_size))
    _, u = module.sphere(x)
    q = torch.softmax(module.inverse_temperature * u.reshape(-1, module.bits) @ corners.t(), -1)
    per_token = -(q * q.log()).sum(-1)
    mean = q.mean(0)
    return per_token.mean(), -(mean * mean.log()).sum()


def test_entropy_loss_is_the_formula():
    """Per-token term: exactly the enumerated entropy. Usage term: the factorised form is an
    upper bound of the enumerated codebook entropy, at most L log 2."""
    module = _module(4, inverse_temperature=3.0, batch_entropy_weight=0.0)
    x = _x(3, 10, seed=8)
    per_token, usage = _exact_entropies(module, x)
    with torch.no_grad():
        loss = module.entropy_loss(x)
        assert_elementwise(loss, per_token, "reduction", "reference")
        module.batch_entropy_weight = 1.0
        factorised_usage = per_token - module.entropy_loss(x)
    # 1e-5: the fp32 rounding of two entropies of O(1) summed over 2^4 corners
    assert usage - 1e-5 <= factorised_usage <= 4 * math.log(2) + 1e-5


def test_entropy_loss_counts_valid_tokens_only():
    module = _module(6)
    x = _x(2, 8, seed=9)
    valid = torch.arange(8).view(1, -1) < torch.tensor([[8], [3]])
    with torch.no_grad():
        masked = module.entropy_loss(x, valid)
        subset = module.entropy_loss(x[valid].unsqueeze(0))
    torch.testing.assert_close(masked, subset)
    wrapper = BSQWrapper(DIM, 6)
    wrapper.bsq.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            wrapper.entropy_loss(x.transpose(1, 2), torch.tensor([8, 3])), masked
        )


def test_wrapper_is_channels_first():
    wrapper = BSQWrapper(DIM, 9).eval()
    x = _x(2, 6, seed=10)
    with torch.no_grad():
        quantized, codes = wrapper(x.transpose(1, 2))
        out, indices = wrapper.bsq(x)
        decoded = wrapper.from_codes(codes)
    assert codes.shape == (2, 1, 6) and torch.equal(codes[:, 0], indices)
    assert torch.equal(quantized, out.transpose(1, 2)) and torch.equal(decoded, quantized)
    assert wrapper.codebook_size == 512


def test_tiny_autoencoder_trains():
    """Linear encoder -> BSQ (8 bits) -> linear decoder on data from a 4-dim subspace:
    reconstruction plus a weighted entropy loss decreases within 20 Adam steps."""
    torch.manual_seed(11)
    basis = torch.randn(4, DIM)
    encoder, decoder = torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, DIM)
    quantizer = BSQ(8, DIM)
    params = [*encoder.parameters(), *decoder.parameters(), *quantizer.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    x = torch.randn(4, 16, 4) @ basis
    losses = []
    for _ in range(20):
        h = encoder(x)
        out, _ = quantizer(h)
        loss = torch.nn.functional.mse_loss(decoder(out), x) + 0.01 * quantizer.entropy_loss(h)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_opcheck():
    module = _module(13)
    x = _x(2, 5)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.bsq.default, (x, *_weights(module), 13, "torch")
    )
    codes = torch.randint(0, 2**13, (2, 5), dtype=torch.int32)
    torch.library.opcheck(
        torch.ops.flexicodec_fast.bsq_decode.default, (codes, *_weights(module)[2:], 13, "torch")
    )


def test_errors():
    module = _module(5)
    w_in, b_in, w_out, b_out = _weights(module)
    x = _x(2, 5)
    with pytest.raises(ValueError, match="BSQ bits must be an int in"):
        BSQ(32, DIM)
    with pytest.raises(ValueError, match=r"x must be a \[B, G, dim\] tensor"):
        bsq(x[0], w_in, b_in, w_out, b_out)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        bsq(x.long(), w_in, b_in, w_out, b_out)
    with pytest.raises(ValueError, match=r"bits must be an int in \[1, 31\], got 32"):
        bsq(x, torch.zeros(32, DIM), torch.zeros(32), torch.zeros(DIM, 32), b_out)
    with pytest.raises(ValueError, match=r"w_in must be of shape \[5, 24\], got \[5, 23\]"):
        bsq(x, w_in[:, :23], b_in, w_out, b_out)
    with pytest.raises(ValueError, match=r"w_out must be of shape \[24, 5\], got \[24, 4\]"):
        bsq(x, w_in, b_in, w_out[:, :4], b_out)
    with pytest.raises(TypeError, match="codes must be int32 or int64, got torch.float32"):
        bsq_decode(torch.zeros(2, 5), w_out, b_out)
    with pytest.raises(ValueError, match=r"codes must be \[B, G\], got shape \[2, 1, 5\]"):
        bsq_decode(torch.zeros(2, 1, 5, dtype=torch.int32), w_out, b_out)
    with pytest.raises(ValueError, match="x must have a contiguous last dimension"):
        bsq(
            x.transpose(1, 2).contiguous().transpose(1, 2),
            w_in,
            b_in,
            w_out,
            b_out,
            backend="triton",
        )
