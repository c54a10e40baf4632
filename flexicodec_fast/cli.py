"""Command line: `flexicodec-fast demo | encode | decode | info | encode-dataset | train |
profile`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

JSON_METADATA = ("thresholds", "audio_lengths", "sources", "sample_rate", "attention_window")
DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo.wav"
BUILTIN_DESCRIPTION = (
    "built-in default model (a small model trained briefly on synthetic espeak-ng speech; "
    "see docs/builtin_model.md for its quality)"
)


def _load_model(args, allow_random: bool = False):
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


def cmd_demo(args) -> int:
    import soundfile as sf

    from .fast import fast_decode, fast_encode
    from .jobs import read_audio

    model, origin = _load_model(args, allow_random=True)
    if origin == "random":
        print(
            "NOTE: the built-in trained model is not bundled yet; running a RANDOMLY INITIALISED "
            "tiny model (seed 0). Codes and timings are real, the decoded audio is not speech."
        )
    elif origin == "builtin":
        print(f"model: {BUILTIN_DESCRIPTION}")
    else:
        print(f"model: {args.checkpoint or args.config}")
    audio = read_audio(args.audio, mix_down=True)[None]
    seconds = audio.shape[-1] / 16000
    nq = min(args.num_quantizers, model.max_num_quantizers)
    start = time.perf_counter()
    options = dict(precision=args.precision, attention_window=args.attention_window)
    enc = fast_encode(audio, model, num_quantizers=nq, merging_threshold=args.threshold, **options)
    encoded = time.perf_counter()
    codes = (enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    decoded = fast_decode(model, *codes, **options)
    done = time.perf_counter()
    frames = int(enc["token_lengths"].sum())
    tokens = int(enc["total_frames"][0])
    args.out.mkdir(parents=True, exist_ok=True)
    out_wav = args.out / "decoded.wav"
    sf.write(str(out_wav), decoded[0, 0].cpu().numpy(), 16000)
    print(f"input: {args.audio} ({seconds:.2f} s)")
    print(f"12.5 Hz frames: {frames}; tokens after merging (threshold {args.threshold}): {tokens}")
    print(f"average frame rate: {tokens / frames * 12.5:.2f} Hz; quantizers: {nq}")
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
    its CTC read-out, trained on the same espeak-ng speech) hears in the input and in the
    decoded audio (16 kHz `[1, N]` each), and their phoneme error rate: a listening check
    that needs no ears."""
    from .asr.recognizer import load_recognizer, phoneme_error_rate

    recognizer = load_recognizer()
    (heard_in,), (heard_out,) = recognizer.transcribe(audio), recognizer.transcribe(decoded)
    print(f"recogniser hears in the input:   {' '.join(heard_in)}")
    print(f"recogniser hears in the decoded: {' '.join(heard_out)}")
    if heard_in:
        errors = phoneme_error_rate([heard_in], [heard_out])
        print(f"decoded vs input: {errors:.1%} phoneme error rate ({len(heard_in)} phonemes)")
    else:
        print("decoded vs input: no phoneme heard in the input, so no error rate")


def _print_report(report, what: str) -> int:
    print(
        f"{what}: {len(report.done)} written, {len(report.skipped)} already done (skipped), "
        f"{len(report.failed)} failed"
    )
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_encode(args) -> int:
    from .jobs import encode_files

    model, _ = _load_model(args)
    report = encode_files(
        model,
        args.paths,
        args.out,
        batch_size=args.batch_size,
        num_quantizers=args.num_quantizers,
        threshold=args.threshold,
        target_frame_rate=args.target_frame_rate,
        precision=args.precision,
        mix_down=args.mix_down,
        attention_window=args.attention_window,
        progress=not args.quiet,
    )
    return _print_report(report, "encode")


def cmd_decode(args) -> int:
    from .jobs import decode_files

    model, _ = _load_model(args)
    report = decode_files(
        model,
        args.paths,
        args.out,
        precision=args.precision,
        allow_other_model=args.allow_other_model,
        attention_window=args.attention_window,
        progress=not args.quiet,
    )
    return _print_report(report, "decode")


def cmd_info(args) -> int:
    from .codes_file import load_codes

    status = 0
    for path in args.paths:
        try:
            codes = load_codes(path)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{path}: error: {e}", file=sys.stderr)
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


def _model_options(p):
    p.add_argument("--checkpoint", type=Path, help="FlexiCodec weights (.safetensors)")
    p.add_argument("--config", type=Path, help="official config YAML")
    p.add_argument("--sensevoice", type=Path, help="SenseVoiceSmall folder (model.pt, am.mvn)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument(
        "--attention-window",
        type=float,
        metavar="SECONDS",
        help="approximate long-audio mode: attention reaches this far each side (linear time; "
        "codes differ from exact attention; see docs/long_audio.md)",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flexicodec-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="encode and decode a clip (default: the bundled demo clip)")
    demo.add_argument("--audio", type=Path, default=DEMO_CLIP)
    demo.add_argument("--out", type=Path, default=Path("out"))
    demo.add_argument("--threshold", type=float, default=0.91)
    demo.add_argument("--num-quantizers", type=int, default=8)
    _model_options(demo)
    demo.set_defaults(func=cmd_demo)

    enc = sub.add_parser("encode", help="encode audio files or folders (recursive) to codes files")
    enc.add_argument("paths", nargs="+", type=Path)
    enc.add_argument("-o", "--out", type=Path, required=True)
    enc.add_argument("--batch-size", type=int, default=8)
    enc.add_argument("--num-quantizers", type=int, default=8)
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument("--threshold", type=float, default=0.91)
    rate.add_argument("--target-frame-rate", type=float, help="Hz; per-item threshold search")
    enc.add_argument(
        "--mix-down", action="store_true", help="average the channels of multi-channel files"
    )
    enc.add_argument("--quiet", action="store_true")
    _model_options(enc)
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="decode codes files (or folders of them) to 16 kHz wav")
    dec.add_argument("paths", nargs="+", type=Path)
    dec.add_argument("-o", "--out", type=Path, required=True)
    dec.add_argument(
        "--allow-other-model",
        action="store_true",
        help="decode files made by another model (fingerprint mismatch)",
    )
    dec.add_argument("--quiet", action="store_true")
    _model_options(dec)
    dec.set_defaults(func=cmd_decode)

    info = sub.add_parser("info", help="print what a codes file holds")
    info.add_argument("paths", nargs="+", type=Path)
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

    args = parser.parse_args(argv)
    from .reference.errors import FlexiCodecError

    try:
        return args.func(args)
    except FlexiCodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
