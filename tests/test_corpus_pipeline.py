"""The human-speech corpus pipeline (scripts/make_corpus.py --human) and the augmentations
(flexicodec_fast.augment), each checked against its definition on small synthetic signals.
No network: package trees are built in tmp_path in the layout `dpkg -x` leaves."""

import gzip
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from make_corpus_module import load_make_corpus

from flexicodec_fast import augment as aug
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.resampling import resample

SR = 16000
HAVE_FFMPEG = shutil.which("ffmpeg") is not None
HAVE_ESPEAK = shutil.which("espeak-ng") is not None


@pytest.fixture(scope="module")
def mc():
    return load_make_corpus()


def tone(freq: float, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return amp * torch.sin(2 * math.pi * freq * t)


def peak_hz(audio: torch.Tensor, sr: int = SR) -> float:
    """The strongest frequency of the middle 80 % of a clip (Hann window, 8x zero padding:
    1/8 Hz bins for one second)."""
    n = audio.numel()
    middle = audio[n // 10 : n - n // 10].double()
    window = torch.hann_window(middle.numel(), dtype=torch.float64)
    spectrum = torch.fft.rfft(middle * window, n=8 * n).abs()
    return int(spectrum.argmax()) * sr / (8 * n)


# --------------------------------------------------------------------------------------------
# Decoding


def test_decode_8khz_wav_is_resampled_to_16khz(mc, tmp_path):
    path = tmp_path / "prompt.wav"
    sf.write(str(path), tone(1000.0, 0.5, sr=8000).numpy(), 8000, subtype="PCM_16")
    audio, rate = mc.decode_audio(path)
    stored = torch.from_numpy(sf.read(str(path), dtype="float32")[0])
    assert rate == 8000 and audio.dtype == torch.float32
    assert torch.equal(audio, resample(stored, 8000, 16000))
    assert audio.numel() == 8000
    assert abs(peak_hz(audio) - 1000.0) <= 0.5
    # A tone's RMS is amplitude / sqrt(2); resampling keeps it.
    assert abs(float(audio[800:-800].pow(2).mean().sqrt()) - 0.5 / math.sqrt(2)) < 2e-3


def test_decode_stereo_ogg_is_mixed_down_and_resampled(mc, tmp_path):
    path = tmp_path / "letter.ogg"
    left, right = tone(500.0, 0.5, sr=44100, amp=0.6), tone(500.0, 0.5, sr=44100, amp=0.2)
    sf.write(str(path), torch.stack([left, right], 1).numpy(), 44100, format="OGG")
    audio, rate = mc.decode_audio(path)
    stored = torch.from_numpy(sf.read(str(path), dtype="float32")[0]).mean(1)
    assert rate == 44100
    assert torch.equal(audio, resample(stored, 44100, 16000))
    assert audio.numel() == math.ceil(left.numel() * 160 / 441)
    assert abs(peak_hz(audio) - 500.0) <= 0.5


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg is not installed (apt-get install ffmpeg)")
@pytest.mark.parametrize(("suffix", "codec_rate"), [(".g722", 16000), (".gsm", 8000)])
def test_decode_telephone_codecs_with_ffmpeg(mc, tmp_path, suffix, codec_rate):
    source = tmp_path / "tone.wav"
    sf.write(str(source), tone(700.0, 1.0, sr=codec_rate).numpy(), codec_rate, subtype="PCM_16")
    encoded = tmp_path / f"tone{suffix}"
    fmt = suffix[1:]
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(source),
            "-ar",
            str(codec_rate),
            "-f",
            fmt,
            str(encoded),
        ],
        check=True,
    )
    audio, rate = mc.decode_audio(encoded)
    assert rate == codec_rate
    # A frame-based codec may pad its last frame: at most 20 ms more (one GSM frame).
    assert SR <= audio.numel() <= SR + SR // 50
    assert abs(peak_hz(audio[:SR]) - 700.0) <= 0.5


def test_decode_rejects_unknown_formats(mc, tmp_path):
    with pytest.raises(ValueError, match="path: expected one of"):
        mc.decode_audio(tmp_path / "prompt.mp3")


# --------------------------------------------------------------------------------------------
# Transcripts, speakers, the split

CORE_SOUNDS_SAMPLE = (
    "\ufeff; Core Asterisk Sounds in English\n"
    "\n"
    "activated: Activated.\n"
    "ascending-2tone: [ascending tones]\n"
    "confbridge-join: <beep ascending>\n"
    "confbridge-leave: (beep)\n"
    "demo-enterkeywords: Please enter one or more keywords separated by * and then press #.\n"
    "digits/7: seven\n"
    "dir-welcome:\n"
    "for: Pour (emphase)\n"
    "vm-options:   Press 1   to record\tyour greeting.  \n"
    "queue-reporthold: Hold time: minutes.\n"
)


def test_parse_core_sounds(mc):
    prompts, non_speech = mc.parse_core_sounds(CORE_SOUNDS_SAMPLE)
    assert prompts == {
        "activated": "Activated.",
        "digits/7": "seven",
        "vm-options": "Press 1 to record your greeting.",
        # Only the first colon separates the name.
        "queue-reporthold": "Hold time: minutes.",
    }
    assert non_speech == {"ascending-2tone", "confbridge-join", "confbridge-leave"}


def test_parse_klettres_sounds(mc):
    xml = """<klettres><language code="fr"><menuitem><label>&amp;French</label></menuitem>
      <alphabet><sound name="A" file="fr/alpha/a-0.ogg" /><sound name="B" file="fr/alpha/a-1.ogg" />
      </alphabet><syllables><sound name="SI" file="fr/syllab/ad-25.ogg" /></syllables>
      </language></klettres>"""
    assert mc.parse_klettres_sounds(xml) == [
        ("A", "fr/alpha/a-0.ogg"),
        ("B", "fr/alpha/a-1.ogg"),
        ("SI", "fr/syllab/ad-25.ogg"),
    ]


def test_speaker_names(mc):
    # The English and Spanish asterisk prompts are one voice (Allison Smith).
    assert mc.asterisk_speaker("en_US_f_Allison") == mc.asterisk_speaker("es_MX_f_Allison")
    assert mc.asterisk_speaker("fr_CA_f_June") == "June"
    assert mc.klettres_speaker("en_GB") == mc.klettres_speaker("en") == "klettres-en"
    assert mc.klettres_speaker("fr") == "klettres-fr"


def test_split_by_speaker_keeps_every_speaker_on_one_side(mc):
    speakers = ["Allison", "June", "Carlo", "klettres-en", "klettres-fr"]
    records = [{"speaker": speakers[i % len(speakers)], "path": f"{i}.wav"} for i in range(23)]
    train, dev = mc.split_by_speaker(records, {"June", "klettres-en"})
    assert {r["speaker"] for r in dev} == {"June", "klettres-en"}
    assert {r["speaker"] for r in train} == {"Allison", "Carlo", "klettres-fr"}
    assert sorted(r["path"] for r in train + dev) == sorted(r["path"] for r in records)
    with pytest.raises(ValueError, match="dev_speakers"):
        mc.split_by_speaker(records, {"Jnue"})


def _fake_asterisk_tree(debs: Path, speaker_folder: str, lang: str = "en") -> None:
    """`dpkg -x` trees of asterisk-core-sounds-<lang>(-g722): WAV stand-ins for the prompts
    (each package's transcripts are CORE_SOUNDS_SAMPLE)."""
    sounds = debs / "x" / f"asterisk-core-sounds-{lang}-g722" / "usr/share/asterisk/sounds"
    voice = sounds / speaker_folder
    for i, name in enumerate(["activated", "digits/7", "ascending-2tone", "silence/1", "extra"]):
        path = voice / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone(300.0 + 100 * i, 0.4).numpy(), SR, subtype="PCM_16")
    doc = debs / "x" / f"asterisk-core-sounds-{lang}" / f"usr/share/doc/asterisk-core-sounds-{lang}"
    doc.mkdir(parents=True)
    (doc / f"core-sounds-{lang}.txt.gz").write_bytes(gzip.compress(CORE_SOUNDS_SAMPLE.encode()))


def _fake_klettres_tree(debs: Path) -> None:
    root = debs / "x" / "klettres-data" / "usr/share/klettres"
    for folder, letters in (("en", "AB"), ("en_GB", "A"), ("nds", "A")):
        sounds = "".join(f'<sound name="{c}" file="{folder}/alpha/{c}.ogg" />' for c in letters)
        (root / folder / "alpha").mkdir(parents=True)
        (root / folder / "sounds.xml").write_text(
            f'<klettres><language code="{folder}"><alphabet>{sounds}</alphabet></language>'
            "</klettres>"
        )
        for c in letters:
            sf.write(str(root / folder / "alpha" / f"{c}.ogg"), tone(400.0, 0.3).numpy(), SR)


def test_collect_human_items_from_unpacked_packages(mc, tmp_path):
    _fake_asterisk_tree(tmp_path, "en_US_f_Allison")
    _fake_klettres_tree(tmp_path)
    items = mc.collect_human_items(["asterisk-core-sounds-en-g722", "klettres-data"], tmp_path)
    got = {(i["speaker"], i["name"], i["text"]) for i in items}
    assert got == {
        # Non-speech ("[ascending tones]") and silence files are left out; "extra" has no line.
        ("Allison", "activated", "Activated."),
        ("Allison", "digits/7", "seven"),
        ("Allison", "extra", None),
        ("klettres-en", "en/A", "a"),
        ("klettres-en", "en/B", "b"),
        ("klettres-en", "en_GB/A", "a"),
        # espeak-ng has no Low German voice: audio without transcript.
        ("klettres-nds", "nds/A", None),
    }


@pytest.mark.skipif(
    not (HAVE_FFMPEG and HAVE_ESPEAK), reason="needs ffmpeg and espeak-ng (apt-get install)"
)
def test_build_human_corpus_is_speaker_disjoint(mc, tmp_path):
    debs = tmp_path / "debs"
    # One voice in two packages, with the same prompt names (as Allison's en and es).
    _fake_asterisk_tree(debs, "en_US_f_Allison")
    _fake_asterisk_tree(debs, "es_MX_f_Allison", "es")
    _fake_klettres_tree(debs)
    out = tmp_path / "corpus"
    packages = ["asterisk-core-sounds-en-g722", "asterisk-core-sounds-es-g722", "klettres-data"]
    stats = mc.build_human_corpus(out, debs, packages, {"klettres-en"}, workers=1, augment=1)
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    dev = [json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines()]
    assert {r["speaker"] for r in dev} == {"klettres-en"}
    assert "klettres-en" not in {r["speaker"] for r in train}
    # Every file under train/ belongs to a training speaker; augmented copies only of train.
    assert not list((out / "train").rglob("klettres-en"))
    assert {p.name for p in (out / "train" / "aug").iterdir()} == {"Allison", "klettres-nds"}
    assert stats["recordings"] == {"train": 7, "heldout": 3}
    assert stats["augmented_copies"] == 7
    # Transcribed: Allison's two prompts in two languages (+ augmented copies); three letters.
    assert len(train) == 8 and len(dev) == 3
    assert len({r["path"] for r in train}) == 8
    assert {r["lang"] for r in train if r["name"] == "activated"} == {"en", "es"}
    assert len(list((out / "train").rglob("*.wav"))) == 14
    assert {r["phonemes"] for r in dev if r["name"].endswith("/A")} == {"eɪ"}
    audio, rate = sf.read(str(out / dev[0]["path"]))
    assert rate == SR and audio.ndim == 1


# --------------------------------------------------------------------------------------------
# Augmentations


def test_scale_level_is_exact():
    x = tone(300.0).float()
    for gain in (-12.5, 0.0, 6.0):
        out = aug.scale_level(x, gain)
        assert torch.equal(out, (x.double() * 10 ** (gain / 20)).float())
        ratio_db = 10 * math.log10(float(out.double().pow(2).sum() / x.double().pow(2).sum()))
        assert abs(ratio_db - gain) < 1e-5


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 20.0])
def test_add_noise_gives_the_snr(snr_db):
    x = tone(440.0)
    noise = aug.colored_noise(x.numel(), 1.0, torch.Generator().manual_seed(1))
    out = aug.add_noise(x, noise, snr_db)
    added = out - x
    measured = 10 * math.log10(float(x.pow(2).mean() / added.pow(2).mean()))
    assert abs(measured - snr_db) < 1e-9
    # The added signal is the given noise, scaled.
    assert torch.allclose(added / added.norm(), noise / noise.norm(), atol=1e-12)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_the_spectral_slope(exponent):
    noise = aug.colored_noise(2**16, exponent, torch.Generator().manual_seed(0))
    assert abs(float(noise.pow(2).mean()) - 1.0) < 1e-12
    # Welch: mean periodogram of 64 segments, then a log-log fit of power against frequency.
    segments = noise.reshape(64, -1)
    power = torch.fft.rfft(segments * torch.hann_window(1024, dtype=torch.float64)).abs().pow(2)
    power = power.mean(0)
    bins = torch.arange(power.numel(), dtype=torch.float64)
    band = (bins >= 4) & (bins <= 450)
    slope = np.polyfit(np.log(bins[band].numpy()), np.log(power[band].numpy()), 1)[0]
    assert abs(slope + exponent) < 0.1


@pytest.mark.parametrize(("low", "high"), [(300.0, 3400.0), (0.0, 4000.0)])
def test_band_limit_removes_energy_outside_the_band(low, high):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(SR, generator=gen, dtype=torch.float64)
    out = aug.band_limit(x, low, high)
    freqs = torch.fft.rfftfreq(SR, 1 / SR, dtype=torch.float64)
    inside = (freqs >= low) & (freqs <= high)
    spec_in, spec_out = torch.fft.rfft(x), torch.fft.rfft(out)
    assert float(spec_out[~inside].abs().pow(2).sum() / spec_in.abs().pow(2).sum()) < 1e-20
    assert torch.allclose(spec_out[inside], spec_in[inside], atol=1e-9)


def test_reverberate_is_convolution_with_the_impulse_response():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4000, generator=gen, dtype=torch.float64)
    rir = aug.synthetic_rir(0.05, 3.0, generator=gen)
    expected = np.convolve(x.numpy(), rir.numpy())[: x.numel()]
    assert torch.allclose(aug.reverberate(x, rir), torch.from_numpy(expected), atol=1e-10)


@pytest.mark.parametrize(("rt60", "drr_db"), [(0.3, 0.0), (0.7, 6.0)])
def test_synthetic_rir_has_its_decay_time_and_direct_to_reverberant_ratio(rt60, drr_db):
    rir = aug.synthetic_rir(rt60, drr_db, generator=torch.Generator().manual_seed(4))
    assert rir[0] == 1.0 and rir.numel() == int(rt60 * SR) + 1
    assert abs(10 * math.log10(1.0 / float(rir[1:].pow(2).sum())) - drr_db) < 1e-9
    # Schroeder's backward-integrated energy decay of the tail; a line fitted from -5 to
    # -35 dB, extrapolated to -60 dB, is the reverberation time (ISO 3382's T30).
    energy = rir[1:].pow(2).flip(0).cumsum(0).flip(0)
    decay_db = 10 * torch.log10(energy / energy[0])
    fit = (decay_db <= -5) & (decay_db >= -35)
    t = torch.arange(1, rir.numel(), dtype=torch.float64)[fit] / SR
    slope = np.polyfit(t.numpy(), decay_db[fit].numpy(), 1)[0]
    assert abs(-60 / slope - rt60) < 0.05 * rt60


def _burst(seconds: float = 1.0) -> torch.Tensor:
    """A 440 Hz tone from 0.25 to 0.75 of the clip, silence around it."""
    x = tone(440.0, seconds)
    n = x.numel()
    x[: n // 4] = 0
    x[3 * n // 4 :] = 0
    return x


def _active_span(x: torch.Tensor) -> tuple[float, float]:
    """First and last sample (in seconds) where the 10 ms RMS envelope exceeds half its max."""
    envelope = x.pow(2).unfold(0, 160, 160).mean(1).sqrt()
    active = (envelope > 0.5 * envelope.max()).nonzero().flatten()
    return float(active[0]) * 0.01, float(active[-1] + 1) * 0.01


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_change_tempo_scales_durations_and_keeps_frequencies(factor):
    x = _burst()
    out = aug.change_tempo(x, factor)
    assert out.numel() == round(x.numel() / factor)
    start, end = _active_span(out)
    # The burst runs from 0.25 s to 0.75 s; at `factor` from 0.25 / factor to 0.75 / factor
    # (to the 10 ms envelope step, plus the vocoder's 1024-sample window smearing the edges).
    assert abs(start - 0.25 / factor) <= 0.03 and abs(end - 0.75 / factor) <= 0.03
    assert abs((end - start) - 0.5 / factor) <= 0.03
    assert abs(peak_hz(aug.change_tempo(tone(440.0), factor)) - 440.0) <= 0.5


@pytest.mark.parametrize("semitones", [-3.0, 2.0, 3.0])
def test_shift_pitch_moves_a_tone_by_the_ratio_and_keeps_the_duration(semitones):
    ratio = 2 ** (semitones / 12)
    x = tone(440.0).float()
    out = aug.shift_pitch(x, ratio)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert abs(peak_hz(out) - 440.0 * ratio) <= 0.5
    start, end = _active_span(aug.shift_pitch(_burst(), ratio))
    assert abs(start - 0.25) <= 0.03 and abs(end - 0.75) <= 0.03


def test_vtlp_warp_is_the_piecewise_linear_map():
    f = torch.linspace(0, 8000, 8001, dtype=torch.float64)
    for alpha in (0.9, 1.1):
        warped = aug.vtlp_warp(f, alpha)
        f0 = 4800 * min(alpha, 1) / alpha
        low = f <= f0
        assert torch.allclose(warped[low], alpha * f[low], atol=1e-9)
        assert float(warped[-1]) == pytest.approx(8000.0, abs=1e-9)
        # Continuous at the boundary and linear above it.
        assert float(aug.vtlp_warp(torch.tensor(f0, dtype=torch.float64), alpha)) == pytest.approx(
            alpha * f0
        )
        upper = warped[~low]
        assert torch.allclose(
            torch.diff(upper, 2), torch.zeros(upper.numel() - 2, dtype=torch.float64), atol=1e-9
        )
        assert bool((torch.diff(warped) > 0).all())


@pytest.mark.parametrize("alpha", [0.9, 1.1])
@pytest.mark.parametrize("freq", [440.0, 3000.0, 6000.0])
def test_warp_vocal_tract_moves_a_spectral_peak_by_the_warp(alpha, freq):
    out = aug.warp_vocal_tract(tone(freq), alpha)
    expected = float(aug.vtlp_warp(torch.tensor(freq, dtype=torch.float64), alpha))
    assert abs(peak_hz(out) - expected) <= 0.5


def test_warp_vocal_tract_with_alpha_one_is_the_identity():
    x = tone(440.0) + tone(2500.0, amp=0.2)
    assert torch.allclose(aug.warp_vocal_tract(x, 1.0), x, atol=1e-9)


def test_random_augment_is_a_function_of_the_seed():
    x = torch.from_numpy(np.random.default_rng(5).standard_normal(SR // 4)).float() * 0.1
    # Seed 3 draws every random step, the noise and the impulse response included.
    first, params = aug.random_augment(x, 3)
    again, params_again = aug.random_augment(x, 3)
    assert {"tempo", "pitch_semitones", "rt60", "snr_db"} <= set(params)
    assert torch.equal(first, again) and params == params_again
    seen = set()
    for seed in range(12):
        out, p = aug.random_augment(x, seed)
        seen |= set(p)
        expected_len = round(x.numel() / p["tempo"]) if "tempo" in p else x.numel()
        assert out.numel() == expected_len and out.dtype == x.dtype
        peak_db = 20 * math.log10(float(out.abs().max()))
        assert -26.0 - 1e-3 <= peak_db <= -0.5 + 1e-3
    assert seen >= {"tempo", "pitch_semitones", "vtlp_alpha", "rt60", "band_hz", "snr_db"}
    assert aug.random_augment(x, 4)[1] != params


def test_augmentations_reject_bad_input():
    with pytest.raises(InputError, match="audio: expected a 1-D float tensor"):
        aug.scale_level(torch.zeros(2, 10), 1.0)
    with pytest.raises(InputError, match="factor: expected a finite number > 0"):
        aug.change_tempo(tone(100.0), 0.0)
    with pytest.raises(InputError, match="noise: expected shape"):
        aug.add_noise(tone(100.0), torch.ones(5, dtype=torch.float64), 10.0)
    with pytest.raises(InputError, match="noise: expected a signal with non-zero power"):
        aug.add_noise(tone(100.0), torch.zeros(SR, dtype=torch.float64), 10.0)
