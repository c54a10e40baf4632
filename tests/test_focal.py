"""Focal modulation (`reference.focal`) against its formula written out with explicit loops,
batch invariance, and the compressor / decompressor around a quantiser."""

import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_elementwise

from flexicodec_fast.reference.bsq import BSQ
from flexicodec_fast.reference.focal import (
    FocalBlock,
    FocalCompressor,
    FocalDecompressor,
    FocalModulation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gelu(v: float) -> float:
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def _modulation_by_loops(module: FocalModulation, x: torch.Tensor) -> torch.Tensor:
    """y_t = q_t * h(sum_l z^l_t g^l_t), out = proj(y), one frame and channel at a time."""
    steps, dim = x.shape
    levels = module.focal_level
    f = module.f(x).tolist()
    q = [row[:dim] for row in f]
    z = [row[dim : 2 * dim] for row in f]
    gates = [row[2 * dim :] for row in f]
    modulator = [[0.0] * dim for _ in range(steps)]
    for level in range(levels):
        weight = module.focal_layers[level].weight[:, 0].tolist()  # [C][k]
        k = len(weight[0])
        # Depth-wise convolution, zero padded, centred on the frame.
        z = [
            [
                _gelu(
                    sum(
                        weight[c][i] * z[t + i - k // 2][c]
                        for i in range(k)
                        if 0 <= t + i - k // 2 < steps
                    )
                )
                for c in range(dim)
            ]
            for t in range(steps)
        ]
        for t in range(steps):
            for c in range(dim):
                modulator[t][c] += z[t][c] * gates[t][level]
    context = [_gelu(sum(z[t][c] for t in range(steps)) / steps) for c in range(dim)]
    for t in range(steps):
        for c in range(dim):
            modulator[t][c] += context[c] * gates[t][levels]
    h = module.h(torch.tensor(modulator))
    return module.proj(torch.tensor(q) * h)


@pytest.mark.parametrize("levels,window,factor", [(2, 3, 2), (3, 1, 2), (1, 5, 0)])
def test_modulation_is_the_formula(levels, window, factor):
    torch.manual_seed(0)
    module = FocalModulation(6, levels, window, factor)
    assert module.kernel_sizes == [window + factor * level for level in range(levels)]
    x = torch.randn(1, 9, 6)
    with torch.no_grad():
        out = module(x)[0]
        expected = _modulation_by_loops(module, x[0])
    assert_elementwise(out, expected, "reduction", "reference")


def test_batched_equals_per_item():
    """Padded frames influence neither the depth-wise convolutions nor the global context,
    and come back as zeros."""
    torch.manual_seed(1)
    compressor = FocalCompressor(12, 6, num_blocks=2, focal_level=3)
    decompressor = FocalDecompressor(6, 12, num_blocks=1)
    x = torch.randn(3, 12, 10)
    lengths = torch.tensor([10, 4, 1])
    with torch.no_grad():
        z = compressor(x, lengths)
        y = decompressor(z, lengths)
        for b, n in enumerate(lengths.tolist()):
            z_b = compressor(x[b : b + 1, :, :n])
            assert_elementwise(z[b : b + 1, :, :n], z_b, "reduction")
            assert_elementwise(y[b : b + 1, :, :n], decompressor(z_b), "reduction")
            assert not z[b, :, n:].any() and not y[b, :, n:].any()


def test_block_is_pre_norm_residual():
    torch.manual_seed(2)
    block = FocalBlock(8)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        h = x + block.layer_scale_1.scale * block.modulation(block.norm1(x))
        expected = h + block.layer_scale_2.scale * block.mlp(block.norm2(h))
        torch.testing.assert_close(block(x), expected)


def test_compressor_structure_and_keys():
    compressor = FocalCompressor(16, 4, num_blocks=3)
    decompressor = FocalDecompressor(4, 16, num_blocks=3)
    keys = set(compressor.state_dict())
    assert {"proj.weight", "snake.alpha", "stack.blocks.2.modulation.f.weight"} <= keys
    assert "stack.blocks.0.modulation.focal_layers.1.weight" in keys
    x = torch.randn(2, 16, 7)
    assert compressor(x).shape == (2, 4, 7)
    assert decompressor(compressor(x)).shape == (2, 16, 7)


def test_errors():
    with pytest.raises(ValueError, match="focal_window odd"):
        FocalModulation(8, 2, 4, 2)
    with pytest.raises(ValueError, match="focal_factor even"):
        FocalModulation(8, 2, 3, 1)


def test_gradients_reach_every_parameter():
    torch.manual_seed(3)
    compressor, decompressor = FocalCompressor(8, 4, 1), FocalDecompressor(4, 8, 1)
    x = torch.randn(2, 8, 6)
    decompressor(compressor(x, torch.tensor([6, 3])), torch.tensor([6, 3])).pow(2).sum().backward()
    for module in (compressor, decompressor):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tiny_autoencoder_around_bsq_trains():
    """Compressor -> BSQ (8 bits) -> decompressor on a batch of sines: the reconstruction
    loss falls within 20 Adam steps (gradients pass the quantiser straight through)."""
    torch.manual_seed(4)
    compressor, decompressor = FocalCompressor(8, 8, 1), FocalDecompressor(8, 8, 1)
    quantizer = BSQ(8, 8)
    params = [*compressor.parameters(), *decompressor.parameters(), *quantizer.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    t = torch.linspace(0, 1, 16)
    x = torch.sin(2 * math.pi * torch.rand(4, 8, 1) * 4 * t)
    losses = []
    for _ in range(20):
        z = compressor(x)
        q, _ = quantizer(z.transpose(1, 2))
        loss = F.mse_loss(decompressor(q.transpose(1, 2)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
