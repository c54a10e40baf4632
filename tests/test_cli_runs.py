"""The CLI as a new user meets it: defaults, re-runs that cannot go stale, bad inputs and
outputs, messages instead of tracebacks, help and progress."""

import argparse
import json
import os
import re
import stat

import pytest
import soundfile as sf
import torch
from cli_helpers import fixture_model, fixture_model_args, short_corpus

from flexicodec_fast import Engine, __version__, cli, jobs
from flexicodec_fast.cli import build_parser, main
from flexicodec_fast.codes_file import SUFFIX, load_codes
from flexicodec_fast.fast import DECODE_STAGES, ENCODE_STAGES, fast_encode


@pytest.fixture(scope="module")
def model_args(fixture_dir):
    return fixture_model_args(fixture_dir)


@pytest.fixture(scope="module")
def model(fixture_dir):
    return fixture_model(fixture_dir)


@pytest.fixture()
def corpus(tmp_path, fixture_clips):
    return short_corpus(tmp_path, fixture_clips)


def test_default_num_quantizers_is_all_the_model_has(tmp_path, corpus, model, model_args, capsys):
    out = tmp_path / "codes"
    assert main(["encode", str(corpus / "a.wav"), "-o", str(out), "--quiet", *model_args]) == 0
    assert capsys.readouterr().err == ""  # no "more than this model has" warning
    codes = load_codes(out / f"a.wav{SUFFIX}", model)
    assert codes.num_quantizers == model.max_num_quantizers == 5
    audio = torch.from_numpy(sf.read(corpus / "a.wav", dtype="float32")[0])
    want = fast_encode(audio[None], model, num_quantizers=5)
    assert torch.equal(codes.acoustic_codes, want["acoustic_codes"])


def test_demo_takes_a_target_frame_rate(tmp_path, corpus, model_args, capsys):
    args = ["demo", "--audio", str(corpus / "a.wav"), "--out", str(tmp_path / "o")]
    assert main([*args, "--target-frame-rate", "5", *model_args]) == 0
    out = capsys.readouterr().out
    assert "(target 5 Hz: threshold " in out and "quantizers: 5\n" in out
    assert float(re.search(r"average frame rate: ([\d.]+) Hz", out)[1]) <= 5


def test_rerun_with_other_settings_refuses_naming_the_difference(
    tmp_path, corpus, model, model_args, capsys
):
    out, clip = tmp_path / "codes", str(corpus / "a.wav")
    first = ["encode", clip, "-o", str(out), "--num-quantizers", "3", "--quiet", *model_args]
    assert main(first) == 0
    target = out / f"a.wav{SUFFIX}"
    before = target.read_bytes()
    capsys.readouterr()
    other = ["encode", clip, "-o", str(out), "--num-quantizers", "2", "--target-frame-rate", "6"]
    assert main([*other, "--quiet", *model_args]) == 2
    err = capsys.readouterr().err
    assert "num_quantizers 3 (now 2)" in err and "target_frame_rate None (now 6.0)" in err
    assert "--overwrite" in err and err.count("\n") == 1
    assert target.read_bytes() == before
    assert main([*other, "--overwrite", "--quiet", *model_args]) == 0
    settings = json.loads(load_codes(target, model).metadata["settings"])
    assert settings["num_quantizers"] == 2 and settings["target_frame_rate"] == 6.0
    capsys.readouterr()
    assert main([*other, "--quiet", *model_args]) == 0
    assert "0 written, 1 already done" in capsys.readouterr().out


def test_resume_redoes_empty_partial_and_unfinished_outputs(
    tmp_path, fixture_clips, model_args, capsys
):
    corpus = short_corpus(tmp_path, fixture_clips)
    for name in ("c", "d"):
        sf.write(corpus / f"{name}.wav", fixture_clips["clipB"][:16000].numpy(), 16000)
    out = tmp_path / "codes"
    args = ["encode", str(corpus), "-o", str(out), "--batch-size", "4", "--quiet", *model_args]
    assert main(args) == 0
    paths = {"b": out / "sub" / f"b.wav{SUFFIX}"} | {
        name: out / f"{name}.wav{SUFFIX}" for name in ("c", "d")
    }
    good = {name: load_codes(path) for name, path in paths.items()}
    paths["b"].write_bytes(b"")  # a 0-byte output
    paths["c"].write_bytes(paths["c"].read_bytes()[:1000])  # a cut one
    # Killed mid-write: the rename never happened, the temporary file was left behind.
    leftover = paths["d"].read_bytes()
    paths["d"].unlink()
    (out / f".d.wav{SUFFIX}.k3j9x2.tmp").write_bytes(leftover[:100])
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "3 written, 1 already done" in captured.out
    assert captured.err.count("warning: redoing") == 2
    for name, path in paths.items():
        redone = load_codes(path)
        assert redone.metadata == good[name].metadata
        for key in ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames"):
            assert torch.equal(getattr(redone, key), getattr(good[name], key))


def test_decode_redoes_an_empty_wav(tmp_path, corpus, model_args, capsys):
    codes, wavs = tmp_path / "codes", tmp_path / "wav"
    assert main(["encode", str(corpus / "a.wav"), "-o", str(codes), "--quiet", *model_args]) == 0
    decode = ["decode", str(codes), "-o", str(wavs), "--quiet", *model_args]
    assert main(decode) == 0
    good = sf.read(wavs / "a.wav", dtype="float32")[0]
    (wavs / "a.wav").write_bytes(b"")
    capsys.readouterr()
    assert main(decode) == 0
    assert "1 written, 0 already done" in capsys.readouterr().out
    assert (sf.read(wavs / "a.wav", dtype="float32")[0] == good).all()
    assert main(decode) == 0
    assert "0 written, 1 already done" in capsys.readouterr().out


def test_the_same_input_twice_is_encoded_and_counted_once(
    tmp_path, corpus, fixture_clips, model_args, capsys
):
    """Also: the progress bar counts seconds of audio (1 + 1.5 here), each file once."""
    sf.write(corpus / "sub" / "b.wav", fixture_clips["clipC"][:24000].numpy(), 16000)
    a = corpus / "a.wav"
    args = ["encode", str(a), str(corpus / "sub" / ".." / "a.wav"), str(corpus)]
    assert main([*args, "-o", str(tmp_path / "codes"), *model_args]) == 0
    captured = capsys.readouterr()
    assert "2 written, 0 already done" in captured.out
    assert "2.5/2.5 s of audio" in captured.err


def test_two_inputs_for_one_output_are_refused(tmp_path, corpus, model_args, capsys):
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "a.wav"
    twin.write_bytes((corpus / "a.wav").read_bytes())
    args = ["encode", str(corpus / "a.wav"), str(twin), "-o", str(tmp_path / "codes")]
    assert main([*args, "--quiet", *model_args]) == 2
    assert "would both be written to" in capsys.readouterr().err


def test_truncated_file_is_an_error_unless_allowed(tmp_path, corpus, model, model_args, capsys):
    data = (corpus / "a.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) - 2 * 6000])  # 16-bit mono: 6000 frames fewer
    out = tmp_path / "codes"
    args = ["encode", str(cut), "-o", str(out), "--quiet", *model_args]
    assert main(args) == 1
    assert "header promises 16000 frames, it holds 10000" in capsys.readouterr().err
    assert not (out / f"cut.wav{SUFFIX}").exists()
    assert main([*args, "--allow-truncated"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "truncated file" in err
    held = torch.from_numpy(sf.read(cut, dtype="float32")[0])
    assert held.numel() == 10000
    want = fast_encode(held[None], model, num_quantizers=None)
    assert torch.equal(load_codes(out / f"cut.wav{SUFFIX}").semantic_codes, want["semantic_codes"])


@pytest.mark.parametrize(
    "command,case,message",
    [
        ("encode", "missing", "nope.wav: no such file or folder"),
        ("encode", "no_audio", "notes: a folder with no .wav / .flac"),
        ("encode", "out_is_file", "a.wav is a file; expected a folder"),
        ("encode", "out_under_file", "cannot write into"),
        ("decode", "missing", "nope.wav: no such file or folder"),
        ("decode", "out_is_file", "a.wav is a file; expected a folder"),
    ],
)
def test_usage_errors_come_before_any_work(
    tmp_path, corpus, monkeypatch, capsys, command, case, message
):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here")
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / f"a.wav{SUFFIX}").write_bytes(b"only its name is looked at")
    inputs = {"missing": tmp_path / "nope.wav", "no_audio": tmp_path / "notes"}.get(
        case, corpus if command == "encode" else tmp_path / "codes"
    )
    out = {
        "out_is_file": corpus / "a.wav",
        "out_under_file": corpus / "a.wav" / "codes",
    }.get(case, tmp_path / "out")
    assert main([command, str(inputs), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_a_usage_error(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "locked"
    out.mkdir(mode=0o555)
    assert main(["encode", str(corpus), "-o", str(out)]) == 2
    assert "cannot write into" in capsys.readouterr().err


def test_outputs_get_the_permissions_the_umask_gives(tmp_path, corpus, model_args):
    codes, wavs = tmp_path / "codes", tmp_path / "wav"
    old = os.umask(0o027)
    try:
        main(["encode", str(corpus / "a.wav"), "-o", str(codes), "--quiet", *model_args])
        main(["decode", str(codes), "-o", str(wavs), "--quiet", *model_args])
    finally:
        os.umask(old)
    assert stat.S_IMODE((codes / f"a.wav{SUFFIX}").stat().st_mode) == 0o640
    assert stat.S_IMODE((wavs / "a.wav").stat().st_mode) == 0o640


@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("--batch-size", "0", "an integer >= 1"),
        ("--batch-size", "-1", "an integer >= 1"),
        ("--num-quantizers", "0", "an integer >= 1"),
        ("--threshold", "5", "a cosine similarity in [-1, 1]"),
        ("--threshold", "nan", "a cosine similarity in [-1, 1]"),
        ("--target-frame-rate", "20", "a rate in (0, 12.5] Hz"),
        ("--attention-window", "0", "a number of seconds > 0"),
    ],
)
def test_argument_ranges_are_one_line_usage_errors(tmp_path, capsys, option, value, expected):
    assert main(["encode", str(tmp_path), "-o", str(tmp_path / "o"), option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected {expected}, got '{value}'" in err
    assert err.count("\n") == 1


def test_ctrl_c_says_what_was_finished(tmp_path, corpus, model_args, monkeypatch, capsys):
    encode_batch, calls = Engine._encode_batch, []

    def interrupted_at_the_second_batch(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode_batch(*args)

    monkeypatch.setattr(Engine, "_encode_batch", interrupted_at_the_second_batch)
    out = tmp_path / "codes"
    args = ["encode", str(corpus), "-o", str(out), "--batch-size", "1", "--quiet", *model_args]
    assert main(args) == 130
    assert capsys.readouterr().err == (
        "interrupted: 1 written this run, 0 already done, 0 failed; outputs are whole files, "
        "so running the same command again resumes\n"
    )
    assert [p.name for p in out.rglob("*") if p.is_file()] == [f"a.wav{SUFFIX}"]


def test_unexpected_error_is_one_line_unless_debug(
    tmp_path, corpus, model_args, monkeypatch, capsys
):
    def fails(*args):
        raise RuntimeError("out of something")

    monkeypatch.setattr(Engine, "_encode_batch", fails)
    args = ["encode", str(corpus / "a.wav"), "-o", str(tmp_path / "o"), "--quiet", *model_args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: out of something (--debug shows the traceback)\n"
    with pytest.raises(RuntimeError, match="out of something"):
        main([*args, "--debug"])


def test_demo_on_a_file_that_is_not_audio(tmp_path, capsys):
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    assert main(["demo", "--audio", str(text), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --audio {text}: not a readable audio file")
    assert err.count("\n") == 1


def _subparsers(parser) -> dict:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


@pytest.mark.parametrize("command", ["demo", "encode", "decode", "info"])
def test_every_option_has_help_and_its_default(command):
    parser = _subparsers(build_parser())[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest}: no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, action.option_strings


def test_top_level_help_and_version(capsys):
    text = " ".join(build_parser().format_help().split())
    for command in ("demo", "encode", "decode", "info"):
        assert re.search(rf"{command} +\w+", text), command
    assert "Without --checkpoint/--config, demo, encode, decode and eval use the built-in" in text
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"flexicodec-fast {__version__}\n"


def test_a_single_file_moves_the_progress_bar_while_it_is_coded(
    tmp_path, corpus, model, monkeypatch
):
    """The bar counts audio seconds and moves stage by stage, not only when a file is done."""
    seen = []  # (seconds on the bar, whether the output exists yet) at every update

    class Recorder(jobs.tqdm):
        def update(self, n=1):
            super().update(n)
            seen.append((self.n, any(out.rglob("*.safetensors")) or any(out.rglob("*.wav"))))

    monkeypatch.setattr(jobs, "tqdm", Recorder)
    clip, out = corpus / "a.wav", tmp_path / "codes"
    seconds = sf.info(clip).duration
    jobs.encode_files(model, [clip], out)
    stages = len(ENCODE_STAGES)
    assert len(seen) == stages and not any(written for _, written in seen)
    assert [n for n, _ in seen] == pytest.approx(
        [seconds * k / stages for k in range(1, stages + 1)]
    )
    seen.clear()
    out = tmp_path / "wavs"
    jobs.decode_files(model, [tmp_path / "codes"], out)
    assert len(seen) == len(DECODE_STAGES) and not any(written for _, written in seen)
    assert seen[-1][0] == pytest.approx(seconds)
