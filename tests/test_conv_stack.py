"""The fast DAC stacks (flexicodec_fast/conv_stack.py) against `reference.dac`.

The stacks fold weight norm, update activations in place, reuse buffers (`Workspace`) and,
on CPU, keep activations channels-last and run pointwise convolutions as one matrix
product. All of that may change summation order only: results agree with the reference to
fp32 rounding (end-to-end parity of the codes is in test_fast_parity.py).
"""

import pytest
import torch

from flexicodec_fast.conv_stack import Conv, FastDecoder, FastEncoder
from flexicodec_fast.reference.dac import Decoder, Encoder
from flexicodec_fast.reference.weight_norm import WNConv1d

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The module with every parameter (biases and Snake alphas included) perturbed, so no
    term of the computation is a trivial zero or one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_encoder_matches_reference(channels_last):
    encoder = _randomised(Encoder(8, [2, 4, 5], 16), seed=0)
    hop = 40
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 37 * hop, generator=gen) * 0.3
    lengths = torch.tensor([37 * hop, 20 * hop, 3 * hop])
    fast = FastEncoder(encoder, None, channels_last)
    with torch.inference_mode():
        want = encoder(x, lengths)
        got = fast(x, lengths)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), encoder(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_decoder_matches_reference(channels_last):
    decoder = _randomised(Decoder(16, 64, [5, 4, 2]), seed=2)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(3, 16, 29, generator=gen)
    lengths = torch.tensor([29, 17, 1])
    fast = FastDecoder(decoder, None, channels_last)
    with torch.inference_mode():
        want = decoder(z, lengths)
        got = fast(z, lengths)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(z), decoder(z), rtol=1e-5, atol=1e-5)


def test_pointwise_convolution_writes_into_the_given_buffer():
    module = _randomised(WNConv1d(24, 40, kernel_size=1), seed=4)
    conv = Conv.fold(module, channels_last=True)
    assert conv.pointwise
    x = torch.randn(2, 24, 300, generator=torch.Generator().manual_seed(5))
    x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    out = torch.empty(2, 40, 1, 300).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = conv(x4, out=out)
        want = module(x)
    assert got is out
    torch.testing.assert_close(got.squeeze(2), want, rtol=1e-6, atol=1e-6)
