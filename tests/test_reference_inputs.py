"""The reference model's contract beyond the fixtures: batch invariance on random lengths,
and a clear `FlexiCodecError` for every kind of bad input."""

import pytest
import torch
from tolerances import assert_elementwise

import flexicodec_fast as ff


@pytest.fixture(scope="module")
def model(fixture_dir):
    return ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )


def test_batch_invariance_on_random_lengths(model):
    gen = torch.Generator().manual_seed(7)
    lens = torch.tensor([1360, 9001, 23456, 15999])
    audio = torch.randn(4, int(lens.max()), generator=gen) * 0.2
    audio[:, : int(lens.max())] *= torch.linspace(0.1, 1, int(lens.max()))
    # Noise in the padding must not matter.
    with torch.no_grad():
        batched = model.encode(audio, lens, num_quantizers=5, merging_threshold=0.95)
        decoded = model.decode(
            batched["semantic_codes"], batched["acoustic_codes"], batched["token_lengths"]
        )
        for i, n in enumerate(lens.tolist()):
            single = model.encode(audio[i : i + 1, :n], None, 5, 0.95)
            groups = int(single["total_frames"][0])
            assert int(batched["total_frames"][i]) == groups
            for key in ("token_lengths", "semantic_codes", "acoustic_codes"):
                assert torch.equal(batched[key][i, ..., :groups], single[key][0]), key
                assert not batched[key][i, ..., groups:].any()
            wav = model.decode(
                single["semantic_codes"], single["acoustic_codes"], single["token_lengths"]
            )
            assert_elementwise(decoded[i, :, : wav.shape[-1]], wav[0], "audio")
            assert not decoded[i, :, wav.shape[-1] :].any()


def test_outputs_are_deterministic(model):
    audio = torch.randn(1, 8000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        a = model.encode(audio, num_quantizers=3)
        b = model.encode(audio, num_quantizers=3)
    for key in ("token_lengths", "semantic_codes", "acoustic_codes"):
        assert torch.equal(a[key], b[key])


GOOD = torch.zeros(1, 4000)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(audio=torch.zeros(1, 0)), "audio"),
        (dict(audio=torch.zeros(0, 4000)), "audio"),
        (dict(audio=torch.zeros(1, 1000)), "at least 1360 samples"),
        (dict(audio=torch.full((1, 4000), float("nan"))), "NaN or Inf"),
        (dict(audio=torch.tensor([[0.0] * 3999 + [float("inf")]])), "NaN or Inf"),
        (dict(audio=torch.zeros(4000)), r"\[B, N\]"),
        (dict(audio=torch.zeros(1, 1, 4000)), r"\[B, N\]"),
        (dict(audio=torch.zeros(1, 4000, dtype=torch.int16)), "float"),
        (dict(audio=[0.0] * 4000), "audio"),
        (dict(audio=GOOD, num_quantizers=0), "num_quantizers"),
        (dict(audio=GOOD, num_quantizers=2.0), "num_quantizers"),
        (dict(audio=GOOD, merging_threshold=float("nan")), "merging_threshold"),
        (dict(audio=GOOD, merging_threshold="0.9"), "merging_threshold"),
        (dict(audio=GOOD, audio_lens=torch.tensor([5000])), "audio_lens"),
        (dict(audio=GOOD, audio_lens=torch.tensor([1000])), "audio_lens"),
        (dict(audio=GOOD, audio_lens=torch.tensor([4000.0])), "audio_lens"),
        (dict(audio=GOOD, audio_lens=torch.tensor([4000, 4000])), "audio_lens"),
    ],
)
def test_bad_encode_input(model, kwargs, match):
    with pytest.raises(ff.InputError, match=match):
        model.encode(**{"num_quantizers": 4, **kwargs})


def test_more_quantizers_than_the_model_has_uses_all_with_one_warning(model):
    """As the official code: asking for more quantizers than 1 + n_codebooks uses them all."""
    audio = torch.randn(1, 6000, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        full = model.encode(audio, num_quantizers=model.max_num_quantizers)
        with pytest.warns(UserWarning, match="using all 5") as record:
            more = model.encode(audio, num_quantizers=model.max_num_quantizers + 3)
    assert len(record) == 1
    assert torch.equal(more["acoustic_codes"], full["acoustic_codes"])
    assert torch.equal(more["semantic_codes"], full["semantic_codes"])


def _codes(model):
    with torch.no_grad():
        return model.encode(
            torch.randn(1, 6000, generator=torch.Generator().manual_seed(2)) * 0.1, num_quantizers=4
        )


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda s, a, t: (s.float(), a, t), "semantic_codes"),
        (lambda s, a, t: (s[:, 0], a, t), "semantic_codes"),
        (lambda s, a, t: (s + 40000, a, t), r"semantic_codes: expected values in \[0, 32768\)"),
        (lambda s, a, t: (s - s - 1, a, t), "semantic_codes"),
        (lambda s, a, t: (s, a + 64, t), r"acoustic_codes: expected values in \[0, 64\)"),
        (lambda s, a, t: (s, torch.cat([a, a], dim=1), t), "acoustic_codes"),
        (lambda s, a, t: (s, a[..., :-1], t), "acoustic_codes"),
        (lambda s, a, t: (s, a, t[:, :-1]), "token_lengths"),
        (lambda s, a, t: (s, a, -t), "token_lengths"),
        (lambda s, a, t: (s, a, t * 0), "token_lengths"),
        (lambda s, a, t: (s, a, t.float()), "token_lengths"),
    ],
)
def test_bad_decode_input(model, change, match):
    enc = _codes(model)
    args = change(enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    with pytest.raises(ff.InputError, match=match):
        model.decode(*args)


def test_errors_are_flexicodec_errors():
    assert issubclass(ff.InputError, ff.FlexiCodecError)
    assert issubclass(ff.CheckpointError, ff.FlexiCodecError)
    assert issubclass(ff.InputError, ValueError)
