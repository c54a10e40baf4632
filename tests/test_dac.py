"""DAC encoder/decoder and weight-normalised convolutions (spec §9) against the official
fixture and against PyTorch's own weight-norm implementations."""

import copy
import math
import warnings

import pytest
import torch
from tolerances import assert_close, relative_error
from torch import nn

from flexicodec_fast.reference.config import FlexiCodecConfig
from flexicodec_fast.reference.dac import DAC
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.reference.weight_norm import (
    WNConv1d,
    WNConvTranspose1d,
    fold_weight_norm,
    normalise_weight_norm_keys,
)

RUNS = [(clip, th) for clip in ("clipA", "clipB", "clipC") for th in ("1", "0.95", "0.91", "0.85")]


def _strip(state_dict, prefix):
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _to_new_spelling(state_dict):
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


def _legacy(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module, dim=0)


@pytest.fixture(scope="module")
def cfg(fixture_dir):
    return FlexiCodecConfig.from_yaml(fixture_dir / "config.yaml")


@pytest.fixture(scope="module")
def dac_state(fixture_state_dict):
    return _strip(fixture_state_dict, "dac.")


@pytest.fixture(scope="module")
def dac(cfg, dac_state):
    model = DAC.from_config(cfg).eval()
    model.load_state_dict(dac_state, strict=True)
    return model


@pytest.fixture(scope="module")
def bottleneck(cfg, fixture_state_dict):
    transformer = pytest.importorskip(
        "flexicodec_fast.reference.transformer",
        reason="reference/transformer.py (bottleneck transformer) is not available",
    )
    module = transformer.ProjectedTransformer(
        cfg.latent_dim,
        cfg.transformer_dim,
        cfg.transformer_num_heads,
        cfg.transformer_num_layers,
        cfg.transformer_dim_feedforward,
    ).eval()
    module.load_state_dict(_strip(fixture_state_dict, "bottleneck_transformer."), strict=True)
    return module


def _audio(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, 1, length, generator=g)


# ---------------------------------------------------------------- keys and weight norm


def test_every_official_dac_key_loads(cfg, dac_state):
    model = DAC.from_config(cfg)
    ours = model.state_dict()
    assert set(ours) == set(dac_state)
    assert all(ours[k].shape == dac_state[k].shape for k in ours)
    result = model.load_state_dict(dac_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_released_architecture_shapes_and_sizes():
    with torch.device("meta"):
        model = DAC(32, [4, 4, 5, 8, 2], 512, 1536, [2, 8, 5, 4, 4], 24, 4096, 8, 1.0)
    sd = model.state_dict()
    assert len(sd) == 462
    assert sd["encoder.block.0.weight_v"].shape == (32, 1, 7)
    assert sd["encoder.block.5.block.4.weight_v"].shape == (1024, 512, 4)
    assert sd["encoder.block.7.weight_v"].shape == (512, 1024, 3)
    # dim 0 of a transposed conv weight is its input channels
    assert sd["decoder.model.1.block.1.weight_g"].shape == (1536, 1, 1)
    assert sd["decoder.model.1.block.1.weight_v"].shape == (1536, 768, 4)
    assert sd["decoder.model.7.weight_v"].shape == (1, 48, 7)
    assert sd["quantizer.quantizers.23.codebook.weight"].shape == (4096, 8)
    params = {
        n: sum(p.numel() for p in getattr(model, n).parameters())
        for n in ("encoder", "quantizer", "decoder")
    }
    assert params == {"encoder": 14_582_336, "quantizer": 1_008_000, "decoder": 34_757_426}


@pytest.mark.parametrize(
    "ours, plain",
    [
        (
            lambda: WNConv1d(6, 10, 7, padding=9, dilation=3),
            lambda: nn.Conv1d(6, 10, 7, padding=9, dilation=3),
        ),
        (
            lambda: WNConv1d(6, 12, 10, stride=5, padding=3),
            lambda: nn.Conv1d(6, 12, 10, stride=5, padding=3),
        ),
        (
            lambda: WNConvTranspose1d(12, 6, 10, stride=5, padding=3),
            lambda: nn.ConvTranspose1d(12, 6, 10, stride=5, padding=3),
        ),
        (
            lambda: WNConvTranspose1d(12, 6, 4, stride=2, padding=1),
            lambda: nn.ConvTranspose1d(12, 6, 4, stride=2, padding=1),
        ),
    ],
    ids=["conv-dilated", "conv-stride5", "transposed-stride5", "transposed-stride2"],
)
def test_weight_norm_conv_is_bit_identical_to_torch(ours, plain):
    torch.manual_seed(0)
    mine = ours()
    legacy = _legacy(plain())
    assert (
        legacy.weight_g.shape == mine.weight_g.shape
        and legacy.weight_v.shape == mine.weight_v.shape
    )
    with torch.no_grad():
        mine.weight_g.uniform_(0.5, 2.0)
        mine.weight_v.normal_()
        mine.bias.normal_()
    legacy.load_state_dict(mine.state_dict(), strict=True)
    x = torch.randn(3, mine.in_channels, 37)
    y_mine, y_legacy = mine(x), legacy(x)
    assert torch.equal(y_mine, y_legacy)
    # trains like the official layer: same gradients for g and V
    y_mine.square().sum().backward()
    y_legacy.square().sum().backward()
    assert torch.equal(mine.weight_g.grad, legacy.weight_g.grad)
    assert torch.equal(mine.weight_v.grad, legacy.weight_v.grad)

    # the newer parametrisation API's state dict loads too, to the same output
    parametrised = nn.utils.parametrizations.weight_norm(plain(), dim=0)
    parametrised.load_state_dict(
        {
            "parametrizations.weight.original0": mine.weight_g.detach(),
            "parametrizations.weight.original1": mine.weight_v.detach(),
            "bias": mine.bias.detach(),
        }
    )
    again = ours()
    again.load_state_dict(parametrised.state_dict(), strict=True)
    assert torch.equal(again(x), parametrised(x))


def test_normalise_weight_norm_keys():
    sd = {
        "a.parametrizations.weight.original0": 1,
        "a.parametrizations.weight.original1": 2,
        "a.bias": 3,
        "parametrizations.weight.original0": 4,
        "b.weight_g": 5,
        "c.weight": 6,
    }
    assert normalise_weight_norm_keys(sd) == {
        "a.weight_g": 1,
        "a.weight_v": 2,
        "a.bias": 3,
        "weight_g": 4,
        "b.weight_g": 5,
        "c.weight": 6,
    }
    assert "a.parametrizations.weight.original0" in sd  # the input is not modified


def test_both_spellings_load_to_identical_outputs(cfg, dac, dac_state):
    new = _to_new_spelling(dac_state)
    assert sum(".parametrizations.weight.original" in k for k in new) == 2 * sum(
        ".weight_g" in k for k in dac_state
    )
    via_hook = DAC.from_config(cfg).eval()
    via_hook.load_state_dict(new, strict=True)
    via_helper = DAC.from_config(cfg).eval()
    via_helper.load_state_dict(normalise_weight_norm_keys(new), strict=True)
    audio, z = _audio(2, 5000), torch.randn(2, cfg.latent_dim, 3)
    with torch.no_grad():
        for other in (via_hook, via_helper):
            assert torch.equal(other.encode_audio(audio), dac.encode_audio(audio))
            assert torch.equal(other.decode_latent(z), dac.decode_latent(z))


def test_fold_weight_norm_is_bit_identical(dac):
    folded = fold_weight_norm(copy.deepcopy(dac))
    kinds = {type(m) for m in folded.modules()}
    assert WNConv1d not in kinds and WNConvTranspose1d not in kinds
    assert nn.Conv1d in kinds and nn.ConvTranspose1d in kinds
    assert not any(k.endswith(("weight_g", "weight_v")) for k in folded.state_dict())
    audio, z, codes = _audio(2, 7000), torch.randn(2, 64, 4), torch.randint(0, 64, (2, 4, 5))
    with torch.no_grad():
        assert torch.equal(folded.encode_audio(audio), dac.encode_audio(audio))
        assert torch.equal(folded.decode_latent(z), dac.decode_latent(z))
        assert torch.equal(folded.quantizer.from_codes(codes), dac.quantizer.from_codes(codes))
        lens = torch.tensor([3000, 7000])
        assert torch.equal(folded.encode_audio(audio, lens), dac.encode_audio(audio, lens))
    assert isinstance(fold_weight_norm(WNConv1d(2, 3, 1)), nn.Conv1d)


# ---------------------------------------------------------------- lengths


@pytest.mark.parametrize("length", [1, 1279, 1280, 1281, 3 * 1280 + 7])
def test_encoder_frames_are_ceil_of_hop(dac, length):
    with torch.no_grad():
        z = dac.encode_audio(_audio(1, length))
    assert z.shape == (1, 64, math.ceil(length / 1280))
    assert dac.num_frames(length) == z.shape[-1]


@pytest.mark.parametrize("frames", [1, 2, 7])
def test_decoder_length(dac, frames):
    with torch.no_grad():
        audio = dac.decode_latent(torch.randn(1, 64, frames))
    assert (
        audio.shape == (1, 1, 1280 * frames - 16)
        and dac.decoded_length(frames) == 1280 * frames - 16
    )
    assert audio.abs().max() <= 1


def test_decoder_length_general_formula():
    # each rate s maps L -> L*s - (s mod 2)
    model = DAC(4, [3, 2], 8, 16, [3, 2, 5], 1, 4, 2).eval()
    for frames in (1, 4):
        with torch.no_grad():
            audio = model.decode_latent(torch.randn(2, 8, frames))
        assert audio.shape[-1] == ((frames * 3 - 1) * 2) * 5 - 1 == model.decoded_length(frames)
        assert model.encode_audio(torch.randn(1, 1, 6 * frames)).shape[-1] == frames


# ---------------------------------------------------------------- per-item lengths


def test_encoder_per_item_lengths_equal_single_item_runs(dac):
    """Claim: with `audio_lens`, an item's frames are the ones a batch of one computes on its
    own samples, up to convolution rounding; past its end they are zero. Merely zeroing the
    samples beyond each item's end is NOT enough: the padding then holds the biases after the
    first layer, and the encoder's ~20-frame right reach carries that into the last frames."""
    lens = torch.tensor([30000, 12000, 1281, 21000])
    audio = _audio(len(lens), int(lens.max()), seed=1)
    naive_input = audio * (torch.arange(audio.shape[-1]) < lens[:, None])[:, None]
    for dtype, precision in ((torch.float64, "fp64"), (torch.float32, "fp32")):
        model, x = copy.deepcopy(dac).to(dtype), audio.to(dtype)
        with torch.no_grad():
            batched = model.encode_audio(x, lens)
            naive = model.encode_audio(naive_input.to(dtype))
            for b, length in enumerate(lens.tolist()):
                alone = model.encode_audio(x[b : b + 1, :, :length])
                frames = alone.shape[-1]
                assert_close(
                    batched[b : b + 1, :, :frames], alone, "latent", "reference", precision
                )
                assert not batched[b, :, frames:].any()
                if length < audio.shape[-1]:  # wrong by far more than rounding: 1e-2
                    naive_last = naive[b : b + 1, :, frames - 1 : frames]
                    assert relative_error(naive_last, alone[..., -1:]) > 1e-2
    # an item already as long as the batch is unaffected by the mask
    with torch.no_grad():
        assert torch.equal(dac.encode_audio(audio, lens)[0], dac.encode_audio(audio)[0])


def test_decoder_per_item_lengths_equal_single_item_runs(dac):
    lens = torch.tensor([5, 2, 9])
    z = torch.randn(3, 64, 9, generator=torch.Generator().manual_seed(2))
    for dtype, precision in ((torch.float64, "fp64"), (torch.float32, "fp32")):
        model = copy.deepcopy(dac).to(dtype)
        with torch.no_grad():
            batched = model.decode_latent(z.to(dtype), lens)
            for b, frames in enumerate(lens.tolist()):
                alone = model.decode_latent(z[b : b + 1, :, :frames].to(dtype))
                n = alone.shape[-1]
                assert n == model.decoded_length(frames)
                assert_close(batched[b : b + 1, :, :n], alone, "audio", "reference", precision)
                assert not batched[b, :, n:].any()


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.encode_audio(torch.zeros(2, 100)),
        lambda m: m.encode_audio(torch.zeros(2, 2, 100)),
        lambda m: m.encode_audio(torch.zeros(1, 1, 0)),
        lambda m: m.encode_audio(torch.zeros(2, 1, 100), torch.tensor([100, 101])),
        lambda m: m.encode_audio(torch.zeros(2, 1, 100), torch.tensor([0, 100])),
        lambda m: m.encode_audio(torch.zeros(2, 1, 100), torch.tensor([100.0, 50.0])),
        lambda m: m.encode_audio(torch.zeros(2, 1, 100), torch.tensor([100])),
        lambda m: m.decode_latent(torch.zeros(1, 63, 4)),
        lambda m: m.decode_latent(torch.zeros(2, 64, 4), torch.tensor([5, 1])),
    ],
)
def test_bad_input_raises(dac, call):
    with pytest.raises(InputError):
        call(dac)


# ---------------------------------------------------------------- end to end against the fixture


def _expand(latent, token_lengths):
    return torch.repeat_interleave(latent, token_lengths, dim=2)


@pytest.mark.parametrize("clip, th", RUNS)
def test_decoded_audio_matches_official(dac, bottleneck, fixture_outputs, clip, th):
    """decoded_audio = dac.decoder(bottleneck(repeat(latent, token_lengths))).

    nq=1: the stored decoder_latent is the decoder input. nq=4: the official decode
    rebuilds the acoustic part with `from_codes` (raw codebook rows), while the stored latent
    went through the straight-through sum `z_e + (C - z_e)` (rounded differently): from the
    codes as the official decode (bit-exact on the fixture's CPU; see the tolerance table's
    `official_dac_audio` for other CPUs), from the stored latent within ~2e-7.
    """
    out = fixture_outputs
    p1, p4 = f"{clip}/th{th}/nq1/", f"{clip}/th{th}/nq4/"
    lengths = out[p1 + "token_lengths"][0]
    assert torch.equal(lengths, out[p4 + "token_lengths"][0])
    assert torch.equal(out[p1 + "semantic_codes"], out[p4 + "semantic_codes"])
    with torch.no_grad():
        semantic = out[p1 + "decoder_latent"]
        audio = dac.decode_latent(bottleneck(_expand(semantic, lengths)))
        assert_close(audio, out[p1 + "decoded_audio"], "official_dac_audio", "reference")

        latent = semantic + dac.quantizer.from_codes(out[p4 + "acoustic_codes"])
        audio = dac.decode_latent(bottleneck(_expand(latent, lengths)))
        assert_close(audio, out[p4 + "decoded_audio"], "official_dac_audio", "reference")

        stored = dac.decode_latent(bottleneck(_expand(out[p4 + "decoder_latent"], lengths)))
        assert_close(stored, out[p4 + "decoded_audio"], "straight_through_audio", "reference")


@pytest.mark.parametrize("th", ["1", "0.85"])
def test_official_unmasked_batch_decode_is_reproduced(dac, bottleneck, fixture_outputs, th):
    """Without lengths nothing is masked, as in the official batched decode (bit-exact on
    the fixture's CPU)."""
    out = fixture_outputs
    p1, p4 = f"batch/th{th}/nq1/", f"batch/th{th}/nq4/"
    token_lengths = out[p4 + "token_lengths"]
    with torch.no_grad():
        latent = out[p1 + "decoder_latent"] + dac.quantizer.from_codes(out[p4 + "acoustic_codes"])
        items = [_expand(latent[b : b + 1], token_lengths[b]) for b in range(latent.shape[0])]
        frames = max(x.shape[-1] for x in items)
        z = torch.cat([nn.functional.pad(x, (0, frames - x.shape[-1])) for x in items])
        got = dac.decode_latent(bottleneck(z))
        assert_close(got, out[p4 + "decoded_audio"], "official_dac_audio", "reference")
