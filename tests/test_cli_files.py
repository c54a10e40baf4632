"""Codes files that cannot lie (checksum, group lengths, metadata), `info` on folders and
into a closed pipe, and decoded WAVs at the input's own sample rate and length."""

import json
import os
import struct
import sys

import pytest
import soundfile as sf
import torch
from cli_helpers import fixture_model, fixture_model_args, poke, short_corpus, tensor_span
from safetensors.torch import save_file
from tolerances import assert_audio_close

import flexicodec_fast as ff
from flexicodec_fast.cli import main
from flexicodec_fast.codes_file import SUFFIX, Codes, load_codes, save_codes
from flexicodec_fast.resampling import resample


@pytest.fixture(scope="module")
def model_args(fixture_dir):
    return fixture_model_args(fixture_dir)


@pytest.fixture(scope="module")
def model(fixture_dir):
    return fixture_model(fixture_dir)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, fixture_clips, model_args):
    """Two codes files of 1-second clips, encoded once for this module (read-only: tests
    that damage a file copy it first)."""
    root = tmp_path_factory.mktemp("encoded")
    corpus = short_corpus(root, fixture_clips)
    assert main(["encode", str(corpus), "-o", str(root / "codes"), "--quiet", *model_args]) == 0
    return root / "codes"


@pytest.fixture()
def codes_copy(encoded, tmp_path):
    target = tmp_path / f"a.wav{SUFFIX}"
    target.write_bytes((encoded / f"a.wav{SUFFIX}").read_bytes())
    return target


def test_a_flipped_byte_anywhere_is_caught_by_the_checksum(codes_copy, model, capsys):
    """Changes every other check misses: a group length and a code, each still in range."""
    codes = load_codes(codes_copy, model)
    damaged = codes_copy.with_name("damaged" + SUFFIX)
    save_codes(damaged, codes)
    start, _ = tensor_span(damaged, "token_lengths")
    first = int(codes.token_lengths[0, 0])
    poke(damaged, start, struct.pack("<q", first - 1 if first > 1 else first + 1))
    with pytest.raises(ff.CodesFileError, match="checksum mismatch"):
        load_codes(damaged, model)

    start, _ = tensor_span(codes_copy, "semantic_codes")
    value = int(codes.semantic_codes[0, 0, 0])
    poke(codes_copy, start, struct.pack("<i", value + 1 if value == 0 else value - 1))
    with pytest.raises(ff.CodesFileError, match="checksum mismatch"):
        load_codes(codes_copy, model)
    # `info` (no model) says the same, names the file and exits 1.
    assert main(["info", str(codes_copy)]) == 1
    err = capsys.readouterr().err
    assert str(codes_copy) in err and "checksum mismatch" in err


def test_info_checks_group_lengths_against_the_recorded_limit(codes_copy, model, capsys):
    """A token of 255 frames (a flipped byte whose checksum was rewritten) is refused
    without a model too: the file records the model's limit (8 for fixture A)."""
    codes = load_codes(codes_copy, model)
    codes.token_lengths[0, 0] = 255
    codes.metadata["frames"] = json.dumps([int(codes.token_lengths.sum())])
    save_codes(codes_copy, codes)
    with pytest.raises(ff.CodesFileError, match="a token covers 255 frames, at most 8"):
        load_codes(codes_copy)
    assert main(["info", str(codes_copy)]) == 1
    assert "at most 8 are possible" in capsys.readouterr().err


def test_a_file_without_checksum_loads_with_a_note(codes_copy, model, model_args, capsys):
    """What older versions wrote: no checksum and none of the newer metadata. It decodes to
    16 kHz audio of the recorded 16 kHz input length."""
    codes = load_codes(codes_copy, model)
    old = {
        key: codes.metadata[key]
        for key in (
            "format",
            "format_version",
            "model_fingerprint",
            "sample_rate",
            "num_quantizers",
            "thresholds",
            "audio_lengths",
            "sources",
            "package_version",
            "attention_window",
        )
    }
    tensors = {
        "semantic_codes": codes.semantic_codes,
        "acoustic_codes": codes.acoustic_codes,
        "token_lengths": codes.token_lengths,
        "total_frames": codes.total_frames,
    }
    save_file(tensors, str(codes_copy), metadata=old)
    with pytest.warns(UserWarning, match="no checksum"):
        again = load_codes(codes_copy, model)
    assert torch.equal(again.semantic_codes, codes.semantic_codes)
    assert main(["info", str(codes_copy)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["tokens"] == codes.total_frames.tolist()
    assert err.startswith("warning: codes file") and "no checksum" in err
    wavs = codes_copy.parent / "wav"
    assert main(["decode", str(codes_copy), "-o", str(wavs), "--quiet", *model_args]) == 0
    info = sf.info(str(wavs / "a.wav"))
    assert (info.samplerate, info.frames) == (16000, json.loads(old["audio_lengths"])[0])


def test_info_accepts_folders(encoded, capsys):
    assert main(["info", str(encoded)]) == 0
    out = capsys.readouterr().out
    files, at, decoder = [], 0, json.JSONDecoder()
    while at < len(out):
        doc, at = decoder.raw_decode(out, at)
        files.append(doc)
        at += 1  # the newline after each document
    assert [f["file"] for f in files] == [
        str(encoded / f"a.wav{SUFFIX}"),
        str(encoded / "sub" / f"b.wav{SUFFIX}"),
    ]


def test_info_into_a_closed_pipe_stops_quietly(encoded, monkeypatch):
    """`info ... | head`: the reader has gone; no BrokenPipeError escapes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    monkeypatch.setattr(sys, "stdout", open(write_end, "w"))  # noqa: SIM115 - closed by dup2
    assert main(["info", str(encoded)]) == 141


def test_decode_gives_the_inputs_rate_and_length(tmp_path, fixture_clips, model, model_args):
    """A 48 kHz input of an odd length decodes to a 48 kHz WAV of exactly that length: the
    16 kHz decode resampled, then cut or zero-padded; --native-16k gives the raw decode."""
    source = resample(fixture_clips["clipB"][:24000], 16000, 48000)[:70001]
    sf.write(tmp_path / "c.wav", source.numpy(), 48000)
    codes_dir, wavs, raw = tmp_path / "codes", tmp_path / "wav", tmp_path / "raw"
    assert (
        main(["encode", str(tmp_path / "c.wav"), "-o", str(codes_dir), "--quiet", *model_args]) == 0
    )
    codes = load_codes(codes_dir / f"c.wav{SUFFIX}", model)
    assert json.loads(codes.metadata["source_sample_rates"]) == [48000]
    assert json.loads(codes.metadata["source_lengths"]) == [70001]
    decoded = ff.fast_decode(
        model, codes.semantic_codes, codes.acoustic_codes, codes.token_lengths
    )[0, 0]

    assert main(["decode", str(codes_dir), "-o", str(wavs), "--quiet", *model_args]) == 0
    audio, rate = sf.read(wavs / "c.wav", dtype="float32")
    want = resample(decoded, 16000, 48000)
    assert rate == 48000 and audio.shape == (70001,)
    n = min(70001, want.numel())
    # The CLI decodes through the engine (a length bucket, masked past the item's end):
    # fast_decode's audio to fp32 rounding, not bit for bit.
    assert_audio_close(torch.from_numpy(audio[:n]), want[:n])
    assert not audio[n:].any()

    args = ["decode", str(codes_dir), "-o", str(raw), "--native-16k", "--quiet", *model_args]
    assert main(args) == 0
    audio, rate = sf.read(raw / "c.wav", dtype="float32")
    assert rate == 16000
    assert_audio_close(torch.from_numpy(audio), decoded)


def test_a_two_item_file_loads_and_its_padding_must_be_zero(encoded, tmp_path, model):
    a, b = (load_codes(encoded / rel, model) for rel in (f"a.wav{SUFFIX}", f"sub/b.wav{SUFFIX}"))
    groups = max(int(a.total_frames[0]), int(b.total_frames[0]))

    def padded(t):
        return torch.nn.functional.pad(t, (0, groups - t.shape[-1]))

    metadata = dict(a.metadata)
    for key in (
        "thresholds",
        "audio_lengths",
        "sources",
        "frames",
        "source_sample_rates",
        "source_lengths",
    ):
        metadata[key] = json.dumps(json.loads(a.metadata[key]) + json.loads(b.metadata[key]))
    both = Codes(
        *(
            torch.cat([padded(getattr(a, key)), padded(getattr(b, key))])
            for key in ("semantic_codes", "acoustic_codes", "token_lengths")
        ),
        torch.cat([a.total_frames, b.total_frames]),
        metadata,
    )
    path = tmp_path / f"both{SUFFIX}"
    save_codes(path, both)
    assert torch.equal(load_codes(path, model).item(1).semantic_codes, b.semantic_codes)
    shorter = int(torch.argmin(both.total_frames))
    assert int(both.total_frames[shorter]) < groups  # so it has a padded tail
    both.semantic_codes[shorter, 0, -1] = 1
    save_codes(path, both)
    with pytest.raises(ff.CodesFileError, match="semantic codes past total_frames must be 0"):
        load_codes(path, model)
