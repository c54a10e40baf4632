"""The fast DAC stacks (flexicodec_fast/conv_stack.py) against `reference.dac`.

The stacks fold weight norm, update activations in place, reuse buffers (`Workspace`) and,
on CPU, keep activations channels-last and run pointwise convolutions as one matrix
product. All of that may change summation order only: results agree with the reference to
fp32 rounding (end-to-end parity of the codes is in test_fast_parity.py).
"""

import math

import pytest
import torch
from tolerances import assert_elementwise

from flexicodec_fast import conv_stack
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
        assert_elementwise(got, want, "latent")
        assert_elementwise(fast(x), encoder(x), "latent")


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
        assert_elementwise(got, want, "audio")
        assert_elementwise(fast(z), decoder(z), "audio")


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
    assert_elementwise(got.squeeze(2), want, "single_reduction")


# Small chunks make a few dozen frames run as several chunks (production: 512 frames).
SMALL_CHUNK = 4
# Encoder rates (the decoder's are reversed): the tiny stacks' and the built-in model's.
RATES = [[2, 4, 5], [2, 4, 8, 8]]


def _reach(module, x, per_in: int, per_out: int) -> tuple[int, int]:
    """Receptive field of `module` in frames, measured: the input frame in the middle is
    changed, in float64 (where no dependency rounds away), and the output frames that change
    are counted on either side. Returns (left, right): how far back and ahead of an output
    frame its inputs lie. per_in / per_out: input / output positions a frame."""
    frame = x.shape[-1] // per_in // 2
    with torch.inference_mode():
        base = module(x)
        moved = x.clone()
        moved[..., frame * per_in : (frame + 1) * per_in] += 1
        changed = (module(moved) != base).flatten(0, 1).any(0).nonzero().flatten() // per_out
    return int(changed.max()) - frame, frame - int(changed.min())


@pytest.mark.parametrize("rates", RATES)
def test_chunk_context_covers_the_receptive_field(rates):
    """Each chunk's context is at least the stacks' receptive field, measured on the
    reference in float64: one frame of context less than the field changes the frames next
    to every chunk boundary."""
    hop = math.prod(rates)
    encoder = _randomised(Encoder(4, rates, 8), seed=6)
    decoder = _randomised(Decoder(8, 32, rates[::-1]), seed=7)
    gen = torch.Generator().manual_seed(8)
    frames = 60
    x = torch.randn(1, 1, frames * hop, generator=gen, dtype=torch.float64)
    z = torch.randn(1, 8, frames, generator=gen, dtype=torch.float64)
    encoder_reach = _reach(encoder.double(), x, hop, 1)
    decoder_reach = _reach(decoder.double(), z, 1, hop)
    assert min(encoder_reach) > 0 and min(decoder_reach) > 0
    assert max(encoder_reach) <= FastEncoder(encoder.float()).context
    assert max(decoder_reach) <= FastDecoder(decoder.float()).context


def _count_runs(stack):
    """Wraps the stack's per-chunk pass so that the test can see how many chunks ran."""
    run, calls = stack._run, []

    def counted(*args):
        calls.append(args[0].shape[-1])
        return run(*args)

    stack._run = counted
    return calls


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunks_equal_the_whole_pass(monkeypatch, channels_last):
    """Inputs long enough to run in chunks give, bit for bit, the whole pass's output, for
    both stacks, with per-item lengths, down to the last frame (the shortest chunked input
    and longer ones).

    Under PyTorch's native convolutions: oneDNN (the default on CPU) picks its transposed-
    and channels-last convolution algorithms by input length, so a position can be summed in
    another order in a chunk than in the whole (measured: up to 4e-7). The native ones are
    position-invariant, except (measured) the decoder's last convolution, one output
    channel: its last partial block of 16 output samples is summed in another order, so a
    chunk must start at an even frame (40 samples a frame) to end in the whole's phase. The
    chunks start at multiples of 4 minus the context, which must then be even.
    """
    encoder = _randomised(Encoder(8, [2, 4, 5], 16), seed=0)
    decoder = _randomised(Decoder(16, 64, [5, 4, 2]), seed=2)
    fast_encoder = FastEncoder(encoder, None, channels_last)
    fast_decoder = FastDecoder(decoder, None, channels_last)
    hop = fast_encoder.hop
    assert fast_decoder.context % 2 == 0, "odd decoder context: chunks end out of phase"
    gen = torch.Generator().manual_seed(9)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        for stack, channels, per_frame in ((fast_encoder, 1, hop), (fast_decoder, 16, 1)):
            shortest = SMALL_CHUNK + 2 * stack.context + 1
            for frames in (shortest, shortest + 2 * SMALL_CHUNK + 3):
                x = torch.randn(2, channels, frames * per_frame, generator=gen) * 0.3
                lengths = torch.tensor([frames, frames - 2 * SMALL_CHUNK - 1]) * per_frame
                monkeypatch.setattr(conv_stack, "CHUNK_FRAMES", 512)
                whole = stack(x, lengths)
                monkeypatch.setattr(conv_stack, "CHUNK_FRAMES", SMALL_CHUNK)
                calls = _count_runs(stack)
                chunked = stack(x, lengths)
                del stack._run
                assert len(calls) == math.ceil(frames / SMALL_CHUNK)
                assert torch.equal(chunked, whole)
