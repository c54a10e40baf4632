"""Command line: `flexicodec-fast demo | encode | decode | info` and the corpus, training,
profiling and download tools.

Exit status: 0 done, 1 some files failed (each reported on stderr; the rest were done),
2 a usage error (a one-line message; nothing was done), 130 interrupted (Ctrl-C; one line says
what was finished). No traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__

JSON_METADATA = (
    "thresholds",
    "audio_lengths",
    "sources",
    "sample_rate",
    "attention_window",
    "frames",
    "source_sample_rates",
    "source_lengths",
    "max_group",
    "codebook_sizes",
    "settings",
)
DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo.wav"
BUILTIN_DESCRIPTION = (
    "built-in default model (a small model trained on synthetic espeak-ng speech, then "
    "fine-tuned on synthetic and human speech; see docs/builtin_model.md for its quality)"
)
EPILOG = (
    "Without --checkpoint/--config, demo, encode, decode and eval use the built-in model "
    "bundled with the package (small, trained mostly on synthetic speech; offline). "
    "`flexicodec-fast COMMAND --help` lists a command's options and their defaults."
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None or a flag's False (those helps say in
    words what leaving the option out does)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage first)."""

    def __init__(self, *args, formatter_class=_Formatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ranged(kind, low, high, low_open=False, what=""):
    """An argparse type: `kind(text)` within [low, high] ((low, high] with `low_open`)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (
            value is None
            or (isinstance(value, float) and not math.isfinite(value))
            or (value <= low if low_open else value < low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


POSITIVE_INT = _ranged(int, 1, None, what="an integer >= 1")
COSINE = _ranged(float, -1.0, 1.0, what="a cosine similarity in [-1, 1]")
FRAME_RATE = _ranged(float, 0.0, 12.5, low_open=True, what="a rate in (0, 12.5] Hz")
SECONDS = _ranged(float, 0.0, None, low_open=True, what="a number of seconds > 0")


def load_model(args, allow_random: bool = False):
    """The model named by --checkpoint/--config, else the built-in one; the demo alone
    falls back to a random tiny model. Returns the model and where it came from:
    "checkpoint", "builtin" or "random"."""
    from .loading import prepare_model
    from .reference.errors import CheckpointError
    from .tiny import random_tiny_model

    if args.checkpoint or args.config:
        return prepare_model(
            args.checkpoint, args.config, args.sensevoice, args.device
        ), "checkpoint"
    try:
        return prepare_model(device=args.device), "builtin"
    except CheckpointError:
        if not allow_random:
            raise
        return random_tiny_model(seed=0), "random"


def _encode_options(args):
    from .options import EncodeOptions

    return EncodeOptions(
        num_quantizers=args.num_quantizers,
        merging_threshold=args.threshold,
        target_frame_rate=args.target_frame_rate,
        precision=args.precision,
        attention_window=args.attention_window,
        mix_down=getattr(args, "mix_down", True),
    )


def cmd_demo(args) -> int:
    import soundfile as sf

    from .fast import fast_decode, fast_encode
    from .jobs import read_source
    from .reference.errors import InputError

    options = _encode_options(args)
    try:
        audio = read_source(args.audio, mix_down=True).audio[None]
    except InputError as e:
        raise InputError(f"--audio {args.audio}: {e}") from None
    model, origin = load_model(args, allow_random=True)
    if origin == "random":
        print(
            "NOTE: the built-in trained model is not bundled yet; running a RANDOMLY INITIALISED "
            "tiny model (seed 0). Codes and timings are real, the decoded audio is not speech."
        )
    elif origin == "builtin":
        print(f"model: {BUILTIN_DESCRIPTION}")
    else:
        print(f"model: {args.checkpoint or args.config}")
    options = options.for_model(model)
    seconds = audio.shape[-1] / 16000
    start = time.perf_counter()
    enc = fast_encode(
        audio,
        model,
        num_quantizers=options.num_quantizers,
        merging_threshold=options.merging_threshold,
        target_frame_rate=options.target_frame_rate,
        precision=options.precision,
        attention_window=options.attention_window,
    )
    encoded = time.perf_counter()
    codes = (enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    decoded = fast_decode(
        model, *codes, precision=options.precision, attention_window=options.attention_window
    )
    done = time.perf_counter()
    frames = int(enc["token_lengths"].sum())
    tokens = int(enc["total_frames"][0])
    args.out.mkdir(parents=True, exist_ok=True)
    out_wav = args.out / "decoded.wav"
    sf.write(str(out_wav), decoded[0, 0].cpu().numpy(), 16000)
    threshold = (
        f"threshold {args.threshold}"
        if args.target_frame_rate is None
        else f"target {args.target_frame_rate:g} Hz: threshold {float(enc['thresholds'][0]):.4f}"
    )
    print(f"input: {args.audio} ({seconds:.2f} s)")
    print(f"12.5 Hz frames: {frames}; tokens after merging ({threshold}): {tokens}")
    print(
        f"average frame rate: {tokens / frames * 12.5:.2f} Hz; quantizers: {options.num_quantizers}"
    )
    mode = (
        "exact attention"
        if args.attention_window is None
        else (f"approximate attention window {args.attention_window:g} s")
    )
    print(f"precision {args.precision}, {mode}")
    print(f"encode {encoded - start:.3f} s, decode {done - encoded:.3f} s")
    print(f"decoded audio: {out_wav}")
    if origin == "builtin":
        _print_heard(audio, decoded[0].cpu())
    return 0


def _print_heard(audio, decoded) -> None:
    """What the bundled phoneme recogniser (the built-in model's frozen semantic encoder with
    its CTC read-out, trained on the same speech) hears in the input and in the
    decoded audio (16 kHz `[1, N]` and `[1, N']`), and their phoneme error rate; then STOI of
    the decoded audio against the input (`stoi.stoi`, over their common length), beside STOI
    of the input with white noise at 10 and 0 dB SNR (seed 0) as a scale: a listening check
    that needs no ears, and whose STOI part holds on human speech too."""
    import torch

    from .asr.degradations import add_white_noise
    from .asr.recognizer import load_recognizer, phoneme_error_rate
    from .reference.errors import InputError
    from .stoi import stoi

    recognizer = load_recognizer()
    (heard_in,), (heard_out,) = recognizer.transcribe(audio), recognizer.transcribe(decoded)
    print(f"recogniser hears in the input:   {' '.join(heard_in)}")
    print(f"recogniser hears in the decoded: {' '.join(heard_out)}")
    if heard_in:
        errors = phoneme_error_rate([heard_in], [heard_out])
        print(f"decoded vs input: {errors:.1%} phoneme error rate ({len(heard_in)} phonemes)")
    else:
        print("decoded vs input: no phoneme heard in the input, so no error rate")
    print(
        "(the recogniser heard synthetic espeak-ng speech and some human recordings in "
        "training: on recordings of people it gets most phonemes wrong even in the original, "
        "64% PER on unseen French "
        "sentences, so on human input its error rate says little; STOI below needs no "
        "recogniser; see docs/builtin_eval.md)"
    )
    n = min(audio.shape[-1], decoded.shape[-1])
    clean, degraded = audio[0, :n], decoded[0, :n]
    try:
        score = stoi(clean, degraded, 16000)
    except InputError as e:
        print(f"STOI decoded vs input: not computed ({e})")
        return
    noisy = {
        snr: stoi(clean, add_white_noise(clean, snr, torch.Generator().manual_seed(0)), 16000)
        for snr in (10, 0)
    }
    print(
        f"STOI decoded vs input: {score:.3f} (the input with white noise at 10 dB SNR: "
        f"{noisy[10]:.3f}, at 0 dB: {noisy[0]:.3f}); a check that needs no recogniser, "
        "so it holds on human speech too"
    )


def _print_report(report, what: str) -> int:
    print(
        f"{what}: {len(report.done)} written, {len(report.skipped)} already done (skipped), "
        f"{len(report.failed)} failed"
    )
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _check_paths(args, suffixes) -> None:
    """Inputs and the output folder, checked before the model is loaded."""
    from .jobs import check_output_folder, collect

    collect(args.paths, suffixes)
    check_output_folder(args.out)


def cmd_encode(args) -> int:
    from .jobs import AUDIO_SUFFIXES, encode_files

    options = _encode_options(args)
    _check_paths(args, AUDIO_SUFFIXES)
    model, _ = load_model(args)
    report = encode_files(
        model,
        args.paths,
        args.out,
        options,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        allow_truncated=args.allow_truncated,
        progress=not args.quiet,
    )
    return _print_report(report, "encode")


def cmd_decode(args) -> int:
    from .codes_file import SUFFIX
    from .jobs import decode_files

    _check_paths(args, (SUFFIX,))
    model, _ = load_model(args)
    report = decode_files(
        model,
        args.paths,
        args.out,
        precision=args.precision,
        allow_other_model=args.allow_other_model,
        attention_window=args.attention_window,
        native_16k=args.native_16k,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return _print_report(report, "decode")


def cmd_info(args) -> int:
    from .codes_file import SUFFIX, load_codes
    from .jobs import collect
    from .reference.errors import FlexiCodecError

    status = 0
    for path, _ in collect(args.paths, (SUFFIX,)):
        try:
            codes = load_codes(path)
        except FlexiCodecError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        frames = codes.token_lengths.sum(dim=1)
        info = {
            "file": str(path),
            "items": int(codes.total_frames.numel()),
            "tokens": codes.total_frames.tolist(),
            "frames_12p5hz": frames.tolist(),
            "average_frame_rate_hz": [
                round(float(t) / float(f) * 12.5, 3)
                for t, f in zip(codes.total_frames, frames, strict=True)
            ],
            **{k: (json.loads(v) if k in JSON_METADATA else v) for k, v in codes.metadata.items()},
            "num_quantizers": codes.num_quantizers,
        }
        print(json.dumps(info, indent=2))
    return status


def add_model_options(p):
    p.add_argument(
        "--checkpoint",
        help="FlexiCodec weights (.safetensors or weights-only .pt; anything prepare_model's "
        "ckpt_path accepts); with neither this nor --config: the built-in model",
    )
    p.add_argument("--config", help="official config YAML (top-level `model:`)")
    p.add_argument(
        "--sensevoice",
        help="SenseVoiceSmall folder (model.pt, am.mvn), when the checkpoint has no "
        "SenseVoice weights",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    from .options import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32: codes equal the reference's; tf32: TF32 matmuls (CUDA); bf16: heavy stages "
        "in bf16, decisions in fp32",
    )
    p.add_argument(
        "--attention-window",
        type=SECONDS,
        metavar="SECONDS",
        help="approximate long-audio mode: attention reaches this far each side (linear time; "
        "codes differ from exact attention; see docs/long_audio.md); default: exact attention",
    )


def _rate_options(p):
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--threshold",
        type=COSINE,
        default=0.91,
        help="merging threshold: adjacent frames with cosine similarity at or below it start "
        "a new token",
    )
    rate.add_argument(
        "--target-frame-rate",
        type=FRAME_RATE,
        metavar="HZ",
        help="instead of --threshold: per file, the threshold giving the largest average "
        "frame rate not above HZ",
    )
    p.add_argument(
        "--num-quantizers",
        type=POSITIVE_INT,
        help="1 semantic + N-1 acoustic codebooks; default: all the model has (more than it "
        "has also means all, with a warning)",
    )


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _interrupted(error) -> str:
    report = getattr(error, "report", None)
    if report is None:
        return "interrupted: nothing was finished"
    return (
        f"interrupted: {len(report.done)} written this run, {len(report.skipped)} already "
        f"done, {len(report.failed)} failed; outputs are whole files, so running the same "
        "command again resumes"
    )


def _run(args) -> int:
    from .reference.errors import FlexiCodecError

    try:
        status = args.func(args)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt as e:
        print(_interrupted(e), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (`| head`) left: send what is still buffered nowhere and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except FlexiCodecError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e} (--debug shows the traceback)", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flexicodec-fast",
        description="FlexiCodec, fast: speech to dynamic-frame-rate tokens and back.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an unexpected error",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        parents=[debug],
        help="encode and decode one clip and print what happened (default: the bundled clip)",
        description="Encode and decode one clip, print frames, tokens, frame rate and timings, "
        "and write OUT/decoded.wav (16 kHz). Without --checkpoint/--config: the built-in "
        "model, or a random tiny one (said so) if it is missing.",
    )
    demo.add_argument("--audio", type=Path, default=DEMO_CLIP, help="audio file (any rate)")
    demo.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    _rate_options(demo)
    add_model_options(demo)
    demo.set_defaults(func=cmd_demo)

    enc = sub.add_parser(
        "encode",
        parents=[debug],
        help="encode audio files or folders (recursive) to codes files",
        description="Encode audio files and folders (recursive) into OUT, mirroring the input "
        "tree: x.wav -> x.wav.codes.safetensors. Finished outputs made with the same model and "
        "settings are skipped, so an interrupted run resumes.",
    )
    enc.add_argument("paths", nargs="+", type=Path, help="audio files and folders")
    enc.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    enc.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=8,
        help="most clips encoded together (the engine batches clips of similar length; "
        "fewer when a batch would not fit its memory budget)",
    )
    _rate_options(enc)
    enc.add_argument(
        "--mix-down",
        action="store_true",
        help="average the channels of multi-channel files (without it they fail)",
    )
    enc.add_argument(
        "--allow-truncated",
        action="store_true",
        help="encode what a cut file holds, with a warning (without it such a file fails)",
    )
    enc.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs, also those made with other settings (without it "
        "those stop the run)",
    )
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(enc)
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser(
        "decode",
        parents=[debug],
        help="decode codes files (or folders of them) to WAV at the inputs' rate and length",
        description="Decode codes files and folders (recursive) into OUT: x.wav.codes."
        "safetensors -> x.wav, at the encoded file's own sample rate and length.",
    )
    dec.add_argument("paths", nargs="+", type=Path, help="codes files and folders")
    dec.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    dec.add_argument(
        "--native-16k",
        action="store_true",
        help="write the decoder's raw 16 kHz output (1280 samples a frame) instead of the "
        "input's rate and length",
    )
    dec.add_argument(
        "--allow-other-model",
        action="store_true",
        help="decode files made by another model (fingerprint mismatch)",
    )
    dec.add_argument(
        "--overwrite", action="store_true", help="replace existing WAVs (without it: skipped)"
    )
    dec.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(dec)
    dec.set_defaults(func=cmd_decode)

    info = sub.add_parser(
        "info",
        parents=[debug],
        help="check codes files (or folders of them) and print what they hold as JSON",
        description="Check codes files and folders (recursive) and print each one's tokens, "
        "frames, frame rate and metadata as JSON.",
    )
    info.add_argument("paths", nargs="+", type=Path, help="codes files and folders")
    info.set_defaults(func=cmd_info)

    from .distributed import add_encode_dataset_parser
    from .evaluate import add_eval_parser
    from .hub import add_download_parser
    from .profiling import add_profile_parser
    from .train.cli import add_train_parser

    add_encode_dataset_parser(sub)
    add_download_parser(sub)
    add_eval_parser(sub)
    add_train_parser(sub)
    add_profile_parser(sub)

    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors (already printed)
        return e.code if isinstance(e.code, int) else 0
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        return _run(args)


if __name__ == "__main__":
    sys.exit(main())
