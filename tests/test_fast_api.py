"""The public fast API beyond parity: options, resampling, channels, target frame rate,
plan caching, and bad input."""

import math

import pytest
import torch
from responsive import responsive
from tolerances import assert_elementwise

import flexicodec_fast as ff
from flexicodec_fast.fast import FastCodec, fast_decode, fast_encode, prepare_audio
from flexicodec_fast.reference.merging import segment
from flexicodec_fast.resampling import resample, resampled_length
from flexicodec_fast.tiny import random_tiny_model


@pytest.fixture(scope="module")
def tiny():
    """A responsive tiny model (tests/responsive.py): its codes follow the audio."""
    return responsive(random_tiny_model(seed=4))


def _audio(n=12000, seed=0):
    return torch.randn(1, n, generator=torch.Generator().manual_seed(seed)) * 0.2


def test_accepts_the_official_model_dict(tiny):
    a = fast_encode(_audio(), tiny, num_quantizers=2)
    b = fast_encode(
        _audio(), {"model": tiny, "feature_extractor": None, "type": "sensevoice"}, num_quantizers=2
    )
    assert torch.equal(a["acoustic_codes"], b["acoustic_codes"])


def test_resampling_matches_a_direct_windowed_sinc(tiny):
    sr = 22050
    x = torch.randn(3000, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    y = resample(x, sr, 16000)
    assert y.shape == (resampled_length(3000, sr),) == (math.ceil(3000 * 16000 / sr),)
    # Direct evaluation of the same filter: sum_n x[n] h(t - n / sr), Hann-windowed sinc.
    base, width = 16000 * 0.99, 6
    samples = [0, 17, 1000, y.numel() - 1]
    want = []
    for j in samples:
        t = j / 16000
        n = torch.arange(3000, dtype=torch.float64)
        u = ((t - n / sr) * base).clamp(-width, width)
        h = torch.where(u == 0, torch.ones_like(u), torch.sin(math.pi * u) / (math.pi * u))
        h = h * torch.cos(u * math.pi / width / 2) ** 2 * base / sr
        want.append((x.double() * h).sum())
    assert_elementwise(y[samples].double(), torch.stack(want), "resampled", "reference")


def test_other_sample_rates_and_channels(tiny):
    audio = _audio(24000)
    stereo = torch.stack([audio, audio], dim=1)
    with pytest.raises(ff.InputError, match="mix_down"):
        fast_encode(stereo, tiny, sample_rate=24000, num_quantizers=2)
    mixed = fast_encode(stereo, tiny, sample_rate=24000, num_quantizers=2, mix_down=True)
    mono = fast_encode(resample(audio, 24000, 16000), tiny, num_quantizers=2)
    assert torch.equal(mixed["acoustic_codes"], mono["acoustic_codes"])


def test_resampling_a_batch_ignores_what_lies_past_each_item():
    """At other sample rates the filter reaches past an item's end: there a lone item has
    silence, so a batch must not show it its batch mates' padding."""
    audio = torch.randn(2, 36000, generator=torch.Generator().manual_seed(2))
    lens = torch.tensor([36000, 20000])
    silent = audio.clone()
    silent[1, 20000:] = 0.0
    noisy, noisy_lens = prepare_audio(audio, lens, 24000, False, "cpu")
    quiet, _ = prepare_audio(silent, lens, 24000, False, "cpu")
    assert torch.equal(noisy, quiet)
    (single,), n = resample(audio[1, :20000], 24000, 16000)[None], int(noisy_lens[1])
    assert n == single.numel()
    assert_elementwise(noisy[1, :n], single, "resampled")


def test_options_compose_per_item(tiny):
    """Stereo 24 kHz input with per-item lengths and garbage padding, mixed down, at a target
    frame rate, in the approximate attention mode: each item's codes and threshold are those
    of the item encoded alone with the same options, and in the exact mode the reference
    model, given the 16 kHz mono item and the chosen threshold, makes the same codes."""
    gen = torch.Generator().manual_seed(3)
    audio = torch.randn(2, 2, 36000, generator=gen) * 0.2
    lens = torch.tensor([36000, 21000])
    options = dict(sample_rate=24000, num_quantizers=3, mix_down=True, target_frame_rate=8.0)
    for window in (None, 0.3):
        batch = fast_encode(audio, tiny, audio_lens=lens, attention_window=window, **options)
        for b, n in enumerate(lens.tolist()):
            item = audio[b : b + 1, :, :n]
            alone = fast_encode(item, tiny, attention_window=window, **options)
            g = int(alone["total_frames"][0])
            assert int(batch["total_frames"][b]) == g
            for key in ("semantic_codes", "acoustic_codes"):
                assert torch.equal(batch[key][b, :, :g], alone[key][0]), (window, b, key)
            assert torch.equal(batch["token_lengths"][b, :g], alone["token_lengths"][0])
            # The threshold is one of the item's similarities, which batching may move by an
            # ulp (continuous outputs are equal within fp32 tolerance, design §4).
            assert_elementwise(batch["thresholds"][b], alone["thresholds"][0], "similarity")
            if window is not None:
                continue
            # A boundary is `similarity <= threshold`, so the chosen similarity s* keeps the
            # segmentation for every threshold in [s*, next similarity): the reference runs a
            # margin above s*, where it cannot tie.
            chosen = float(alone["thresholds"][0])
            sims = alone["similarity"][0].double()
            assert not bool(((sims > chosen) & (sims < chosen + 1e-4)).any())
            with torch.inference_mode():
                want = tiny.encode(
                    resample(item.mean(dim=1), 24000, 16000),
                    num_quantizers=3,
                    merging_threshold=chosen + 5e-5,
                )
            for key in ("semantic_codes", "acoustic_codes", "token_lengths"):
                assert torch.equal(alone[key], want[key]), (b, key)


def test_padding_past_an_item_does_not_reach_its_codes():
    """16 kHz items padded with noise, not silence: the acoustic encoder sees the zeros a
    lone item is padded with between its end and its last hop boundary, so every item gets
    the reference's codes of the item alone (a responsive model: its codes follow the
    audio)."""
    model = responsive(random_tiny_model(seed=0))
    audio = 0.3 * torch.randn(3, 30000, generator=torch.Generator().manual_seed(8))
    lens = torch.tensor([30000, 5200, 19000])  # not multiples of the 1280-sample hop
    batch = fast_encode(audio, model, num_quantizers=5, merging_threshold=0.999, audio_lens=lens)
    for b, n in enumerate(lens.tolist()):
        with torch.inference_mode():
            alone = model.encode(audio[b : b + 1, :n], num_quantizers=5, merging_threshold=0.999)
        g = int(alone["total_frames"][0])
        assert int(batch["total_frames"][b]) == g
        for key in ("semantic_codes", "acoustic_codes"):
            assert torch.equal(batch[key][b, :, :g], alone[key][0]), (b, key)


def test_target_frame_rate_picks_the_largest_rate_not_above_target(tiny):
    audio = torch.cat([_audio(20000, 1), _audio(20000, 2) * 0.01], dim=0)
    enc = fast_encode(audio, tiny, num_quantizers=2, target_frame_rate=7.0)
    frames = enc["token_lengths"].sum(dim=1)
    rates = enc["total_frames"] / frames * 12.5
    assert bool((rates <= 7.0).all())
    sem = enc["semantic_features"].transpose(1, 2)
    for b in range(2):
        t = int(frames[b])
        sims = sorted(set(enc["similarity"][b, : t - 1].tolist()))
        # every larger candidate threshold would exceed the target
        chosen = float(enc["thresholds"][b])
        above = [s for s in sims if s > chosen]
        if above:
            seg = segment(sem[b : b + 1, :t], above[0], 8)
            assert int(seg.num_groups[0]) / t * 12.5 > 7.0
        seg = segment(sem[b : b + 1, :t], chosen, 8)
        assert torch.equal(seg.token_lengths[0], enc["token_lengths"][b, : seg.max_groups])


def test_plan_is_rebuilt_when_weights_change():
    model = random_tiny_model(seed=5)
    audio = _audio()
    first = FastCodec.for_model(model)
    assert FastCodec.for_model(model) is first
    before = fast_decode(
        model,
        *(
            fast_encode(audio, model, num_quantizers=2)[k]
            for k in ("semantic_codes", "acoustic_codes", "token_lengths")
        ),
    )
    with torch.no_grad():
        model.dac.decoder.model[0].weight_g.mul_(2)
    assert FastCodec.for_model(model) is not first
    enc = fast_encode(audio, model, num_quantizers=2)
    after = fast_decode(model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    with torch.inference_mode():
        want = model.decode(enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    assert_elementwise(after, want, "audio")
    assert not torch.equal(before, after)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(audio=torch.zeros(1, 1000)), "1360"),
        (dict(audio=torch.full((1, 4000), float("nan"))), "NaN"),
        (dict(audio=torch.zeros(4000)), "audio"),
        (dict(audio=torch.zeros(1, 4000, dtype=torch.int32)), "audio"),
        (dict(audio=torch.zeros(1, 4000), sample_rate=0), "sample_rate"),
        (dict(audio=torch.zeros(1, 4000), num_quantizers=0), "num_quantizers"),
        (dict(audio=torch.zeros(1, 4000), merging_threshold=5.0), r"\[-1, 1\]"),
        (dict(audio=torch.zeros(1, 3, 4000)), "mix_down"),
        (dict(audio=torch.zeros(1, 4000, 2)), "channels-last"),
        (dict(audio=torch.zeros(1, 4000), backend="cuda"), "backend"),
        (dict(audio=torch.zeros(1, 4000), precision="fp8"), "precision"),
        (dict(audio=torch.zeros(1, 4000), target_frame_rate=20.0), "target_frame_rate"),
        (dict(audio=torch.zeros(1, 4000), audio_lens=torch.tensor([9000])), "audio_lens"),
    ],
)
def test_bad_input(tiny, kwargs, match):
    kwargs = {"num_quantizers": 2, **kwargs}
    with pytest.raises(ff.InputError, match=match):
        fast_encode(model=tiny, **kwargs)


def test_more_quantizers_than_the_model_has_uses_all_with_one_warning(tiny):
    audio = _audio()
    full = fast_encode(audio, tiny, num_quantizers=tiny.max_num_quantizers)
    with pytest.warns(UserWarning, match="using all 5") as record:
        more = fast_encode(audio, tiny, num_quantizers=9)
    assert len(record) == 1 and record[0].filename == __file__
    assert torch.equal(more["acoustic_codes"], full["acoustic_codes"])
    assert torch.equal(
        fast_encode(audio, tiny, num_quantizers=None)["acoustic_codes"], full["acoustic_codes"]
    )


def test_bad_model_and_codes(tiny):
    with pytest.raises(ff.InputError, match="model"):
        fast_encode(_audio(), object())
    enc = fast_encode(_audio(), tiny, num_quantizers=2)
    with pytest.raises(ff.InputError, match="acoustic_codes"):
        fast_decode(tiny, enc["semantic_codes"], enc["acoustic_codes"] + 64, enc["token_lengths"])
    with pytest.raises(ff.InputError, match="token_lengths"):
        fast_decode(
            tiny, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"][:, :-1]
        )


@pytest.mark.parametrize("window", [None, 2.0])
def test_long_audio_in_chunks_equals_whole(monkeypatch, tiny, window):
    """Chunked front-end and DAC stacks, and the transformers' and SenseVoice's row-wise
    layers and RoPE by position slices (all forced tiny), give the whole-sequence codes, in
    the exact and in the approximate (`attention_window`) mode."""
    import flexicodec_fast.conv_stack as conv_stack
    import flexicodec_fast.fast as fast
    import flexicodec_fast.fast_modules as fast_modules
    from flexicodec_fast.kernels import attention as attention_kernel

    gen = torch.Generator().manual_seed(11)
    audio = torch.randn(2, 16000 * 6, generator=gen) * torch.linspace(0.05, 0.4, 16000 * 6)
    lens = torch.tensor([16000 * 6, 16000 * 4 + 123])
    options = dict(num_quantizers=3, audio_lens=lens, attention_window=window)
    whole = fast_encode(audio, tiny, **options)
    codes = (whole["semantic_codes"], whole["acoustic_codes"], whole["token_lengths"])
    wav = fast_decode(tiny, *codes, attention_window=window)
    monkeypatch.setattr(conv_stack, "CHUNK_FRAMES", 4)
    monkeypatch.setattr(fast, "FBANK_CHUNK_FRAMES", 97)
    monkeypatch.setattr(fast_modules, "ROW_CHUNK", 13)
    monkeypatch.setattr(attention_kernel, "ROPE_CHUNK", 11)
    chunked = fast_encode(audio, tiny, **options)
    for key in ("token_lengths", "semantic_codes", "acoustic_codes"):
        assert torch.equal(chunked[key], whole[key]), key
    assert_elementwise(
        chunked["semantic_features"], whole["semantic_features"], "semantic_features"
    )
    wav_chunked = fast_decode(tiny, *codes, attention_window=window)
    assert_elementwise(wav_chunked, wav, "audio")


def test_fast_path_runs_without_optional_packages():
    """triton, ray, pyarrow, datasets, NVML and matplotlib are extras: the CPU pipeline and the
    CLI must work with none of them importable."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ['triton', 'ray', 'pyarrow', 'datasets', 'pynvml', 'matplotlib']:\n"
        "    sys.modules[m] = None\n"
        "import torch\n"
        "from flexicodec_fast import fast_decode, fast_encode\n"
        "from flexicodec_fast.tiny import random_tiny_model\n"
        "m = random_tiny_model()\n"
        "e = fast_encode(torch.randn(1, 8000) * 0.1, m, num_quantizers=3)\n"
        "w = fast_decode(m, e['semantic_codes'], e['acoustic_codes'], e['token_lengths'])\n"
        "print('ok', tuple(w.shape))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")
