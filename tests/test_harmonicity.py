"""`flexicodec_fast.harmonicity` against its definition (module docstring): the
autocorrelation recomputed sum by sum, pitch lags of tones of known period, and the
periodicity of a tone in white noise against the signal-to-noise ratio."""

import numpy as np
import pytest
import torch
from signals import harmonic_tone

from flexicodec_fast.harmonicity import (
    FIRST_LAG,
    FRAME,
    HOP,
    frame_autocorrelation,
    harmonicity,
    periodicity,
    pitch_track,
)
from flexicodec_fast.reference.errors import InputError

SR = 16000


def _tone(f0: float, seconds: float = 1.0) -> torch.Tensor:
    """Five harmonics (amplitudes 1/k) of a constant pitch `f0` Hz: `[N]` float32."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return sum(0.3 / k * torch.sin(2 * torch.pi * f0 * k * t) for k in range(1, 6)).float()


def _noise(n: int, seed: int, rms: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, generator=gen, dtype=torch.float64)
    return (noise * rms / noise.square().mean().sqrt()).float()


def _rms(x: torch.Tensor) -> float:
    return float(x.double().square().mean().sqrt())


def test_autocorrelation_follows_its_definition():
    audio = _tone(150, 0.15) + _noise(2400, 0, 0.05)
    r = frame_autocorrelation(audio).numpy()
    x = audio.double().numpy()
    starts = range(0, x.size - FRAME + 1, HOP)
    assert r.shape[0] == len(starts) == 1 + (x.size - FRAME) // HOP
    for i, start in enumerate(starts):
        frame = x[start : start + FRAME] - x[start : start + FRAME].mean()
        for j in range(r.shape[1]):
            lag = FIRST_LAG + j
            a, b = frame[: FRAME - lag], frame[lag:]
            want = np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))
            assert r[i, j] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("f0", [70.0, 125.0, 190.0, 380.0])
def test_constant_pitch_is_voiced_at_its_period(f0):
    audio = _tone(f0)
    voiced, lag = pitch_track(audio)
    assert voiced.all()
    assert torch.equal(lag, torch.full_like(lag, round(SR / f0)))
    score = harmonicity(audio, audio)
    assert score["voiced_frames"] == score["frames"] == 1 + (SR - FRAME) // HOP
    assert score["original"] == score["decoded"] > 0.99


def test_gliding_pitch_is_tracked():
    # tests.signals.harmonic_tone, seed 1: phase 2 pi f0 t (1 + 0.15 t) with f0 = 145 Hz, so
    # the pitch at time t is f0 (1 + 0.3 t); a frame's lag is that at its centre, +-1 sample
    # for the glide within the frame.
    audio = torch.from_numpy(harmonic_tone(1.0, 1))
    voiced, lag = pitch_track(audio)
    centre = (torch.arange(len(lag)) * HOP + FRAME / 2) / SR
    want = torch.round(SR / (145 * (1 + 0.3 * centre))).long()
    assert voiced.all()
    assert (lag - want).abs().max() <= 1


def test_noise_and_silence_are_not_voiced():
    noise = _noise(SR, 1, 0.1)
    voiced, _ = pitch_track(noise)
    assert not voiced.any()
    assert harmonicity(noise, noise) == {
        "original": None,
        "decoded": None,
        "voiced_frames": 0,
        "frames": 1 + (SR - FRAME) // HOP,
    }
    # The same tone 60 dB down counts as silence (below -40 dB of the loudest frame).
    tone = _tone(125)
    voiced, _ = pitch_track(torch.cat([tone, tone / 1000]))
    loud_frames = 1 + (SR - FRAME) // HOP
    assert voiced[:loud_frames].all()
    assert not voiced[loud_frames + FRAME // HOP :].any()


def test_periodicity_falls_with_the_signal_to_noise_ratio():
    tone = _tone(125)
    scores = []
    for snr in (30.0, 20.0, 10.0, 0.0, -10.0):
        noisy = tone + _noise(tone.numel(), 2, _rms(tone) * 10 ** (-snr / 20))
        score = harmonicity(tone, noisy)
        assert score["original"] > 0.999
        if snr >= 0:
            # r of s + n at the period: sum s^2 / (sum s^2 + sum n^2); the max over +-2 lags
            # of the noise's correlations adds a little.
            assert score["decoded"] == pytest.approx(1 / (1 + 10 ** (-snr / 10)), abs=0.05)
        scores.append(score["decoded"])
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores


def test_decoded_is_scored_at_the_originals_pitch_lag():
    # Perfectly periodic, but at another pitch: 200 Hz (lag 80) is not periodic at 128.
    original, decoded = _tone(125), _tone(200)
    assert harmonicity(decoded, decoded)["original"] > 0.99
    score = harmonicity(original, decoded)
    assert score["original"] > 0.99
    assert score["decoded"] < 0.3


def test_decoded_is_scored_on_the_originals_voiced_frames():
    # The original's second half has the same pitch lag but is silent (60 dB down), so not
    # voiced; the decoded audio is voiced exactly there, and noise where the original is voiced.
    tone, noise = _tone(125), _noise(SR, 3, 0.1)
    original, decoded = torch.cat([tone, tone / 1000]), torch.cat([noise, tone])
    ours, theirs = periodicity(original, decoded)
    # Voiced: the frames wholly inside the loud tone, and at most those straddling its end.
    tone_frames = 1 + (SR - FRAME) // HOP
    assert tone_frames <= ours.numel() <= tone_frames + FRAME // HOP
    assert float(theirs.mean()) < 0.2


def test_input_errors_name_the_argument():
    with pytest.raises(InputError, match=r"decoded: expected a float tensor \[N\].*\[1, 800\]"):
        harmonicity(torch.zeros(800), torch.zeros(1, 800))
    with pytest.raises(InputError, match=r"original: .*int64"):
        harmonicity(torch.zeros(800, dtype=torch.int64), torch.zeros(800))
