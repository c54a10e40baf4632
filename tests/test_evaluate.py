"""`flexicodec-fast eval`: every metric equals a direct call of its library (or its
definition) on the input resampled to 16 kHz and the decoded audio; a perfect copy scores
STOI 1 and PESQ >= 4.5; the table, JSON and PNG are written."""

import json
import math
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import save_file

pystoi = pytest.importorskip("pystoi")
pesq = pytest.importorskip("pesq")

from flexicodec_fast import evaluate as ev  # noqa: E402 - after the skips
from flexicodec_fast.cli import main  # noqa: E402
from flexicodec_fast.fast import fast_decode, fast_encode  # noqa: E402
from flexicodec_fast.reference.losses import MelLossSettings, MultiScaleMelLoss  # noqa: E402
from flexicodec_fast.resampling import resample  # noqa: E402
from flexicodec_fast.tiny import random_tiny_model  # noqa: E402


def _speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of a gliding pitch, syllable-rate
    amplitude modulation and a little noise, at `rate` Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * envelope * voiced + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 16 kHz mono clip and a 48 kHz stereo clip."""
    folder = tmp_path_factory.mktemp("clips")
    sf.write(str(folder / "a.wav"), _speechlike(2.0, 16000, 1), 16000, subtype="FLOAT")
    stereo = np.stack([_speechlike(1.6, 48000, 2), _speechlike(1.6, 48000, 3)], axis=1)
    sf.write(str(folder / "b.wav"), stereo, 48000, subtype="FLOAT")
    return folder


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(seed=0)


def _si_sdr_by_definition(s: np.ndarray, e: np.ndarray) -> float:
    s, e = torch.from_numpy(s).double(), torch.from_numpy(e).double()
    s, e = s - s.mean(), e - e.mean()
    target = (e @ s) / (s @ s) * s
    return float(10 * torch.log10((target @ target) / ((target - e) @ (target - e))))


def test_si_sdr_of_a_known_mixture():
    s = np.array([1.0, -1.0, 1.0, -1.0])
    noise = np.array([1.0, 1.0, -1.0, -1.0])  # zero mean, orthogonal to s
    # a = 0.5: target energy 0.25 * 4 = 1, noise energy 4 -> 10 log10(1 / 4)
    # float64 arithmetic on exact values: rel 1e-12 is a few ulps of the log
    assert ev.si_sdr(s, 0.5 * s + noise) == pytest.approx(10 * math.log10(0.25), rel=1e-12)
    assert ev.si_sdr(s, 3.0 * s + 7.0) == math.inf  # scale and offset do not count


def test_identical_audio_scores_perfect(clips):
    audio = ev.read_16k(clips / "a.wav")
    q = ev.quality(audio, audio.clone())
    # pystoi's correlations of identical float64 signals: 1 up to rounding
    assert q["stoi"] == pytest.approx(1.0, abs=1e-9)
    assert q["estoi"] == pytest.approx(1.0, abs=1e-9)
    assert q["pesq_wb"] >= 4.5
    assert q["si_sdr_db"] == math.inf
    assert q["log_mel"] == 0.0


def test_metrics_equal_direct_library_calls(model, clips):
    settings = [ev.Setting(threshold=0.91), ev.Setting(target_frame_rate=6.0)]
    files = [clips / "a.wav", clips / "b.wav"]
    report = ev.evaluate(model, files, settings, num_quantizers=3)
    mel = MultiScaleMelLoss(MelLossSettings(filter_sample_rate=None))
    for setting, result in zip(settings, report["results"], strict=True):
        for path, row in zip(files, result["files"], strict=True):
            wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
            reference = resample(torch.from_numpy(wav.mean(axis=1)), sr, 16000)
            enc = fast_encode(
                reference[None],
                model,
                num_quantizers=3,
                merging_threshold=setting.threshold or 0.91,
                target_frame_rate=setting.target_frame_rate,
            )
            decoded = fast_decode(
                model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
            )[0, 0]
            n = min(reference.numel(), decoded.numel())
            ref, dec = reference[:n].double().numpy(), decoded[:n].double().numpy()
            # Equal but for the last bits: numpy's threaded reductions differ run to run.
            assert row["stoi"] == pytest.approx(pystoi.stoi(ref, dec, 16000), rel=1e-12)
            estoi = pystoi.stoi(ref, dec, 16000, extended=True)
            assert row["estoi"] == pytest.approx(estoi, rel=1e-12)
            assert row["pesq_wb"] == pesq.pesq(16000, ref, dec, "wb")
            # float64 on both sides, summed in other orders over a clip
            assert row["si_sdr_db"] == pytest.approx(_si_sdr_by_definition(ref, dec), rel=1e-9)
            with torch.no_grad():
                want_mel = float(mel(decoded[None, :n], reference[None, :n]))
            assert row["log_mel"] == want_mel
            tokens, frames = int(enc["total_frames"][0]), int(enc["token_lengths"].sum())
            assert (row["tokens"], row["frames"]) == (tokens, frames)
            assert row["frame_rate_hz"] == pytest.approx(tokens / frames * 12.5)
            seconds = reference.numel() / 16000
            assert row["tokens_per_second"] == pytest.approx(tokens * 3 / seconds)
        total = result["total"]
        for key in ev.METRICS:
            assert total[key] == pytest.approx(sum(r[key] for r in result["files"]) / 2)
        tokens = sum(r["tokens"] for r in result["files"])
        frames = sum(r["frames"] for r in result["files"])
        assert total["frame_rate_hz"] == pytest.approx(tokens / frames * 12.5)
    assert report["results"][1]["files"][0]["frame_rate_hz"] <= 6.0


def test_cli_writes_table_json_and_png(model, clips, tmp_path, capsys):
    save_file(model.state_dict(), str(tmp_path / "tiny.safetensors"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"model": model.config.to_dict()}))
    out = tmp_path / "report"
    status = main(
        [
            "eval",
            str(clips),
            "--threshold",
            "0.91",
            "1.0",
            "--num-quantizers",
            "2",
            "-o",
            str(out),
            "--checkpoint",
            str(tmp_path / "tiny.safetensors"),
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    table = (out / "eval.md").read_text()
    assert "| metric | threshold 0.91 | threshold 1 |" in table
    assert "| a.wav | threshold 0.91 |" in table and "| b.wav | threshold 1 |" in table
    assert table in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert [r["label"] for r in report["results"]] == ["threshold 0.91", "threshold 1"]
    assert [row["file"] for row in report["results"][0]["files"]] == ["a.wav", "b.wav"]
    assert report["results"][1]["total"]["frame_rate_hz"] == pytest.approx(12.5)
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_metric_package_names_the_extra(model, clips, monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)
    with pytest.raises(ev.MetricsUnavailable, match=r"pesq .*flexicodec-fast\[eval\]"):
        ev.evaluate(model, [clips / "a.wav"], [ev.Setting(threshold=0.91)])
