"""`flexicodec-fast encode-dataset`: the command line of `encode_dataset`."""

from __future__ import annotations

import logging
import sys

from ..reference.errors import InputError
from .errors import require
from .job import encode_dataset
from .shards import ERRORS_DIR
from .storage import join_uri


def add_encode_dataset_parser(subparsers) -> None:
    """Register `flexicodec-fast encode-dataset` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "encode-dataset",
        help="encode a corpus on a Ray cluster (local or --address) into parquet shards",
        description="Encode a folder, manifest or list of audio files with Ray Data into "
        "resumable parquet shards (one row per clip; failures in OUT/errors). Needs the "
        "[ray] extra.",
    )
    p.add_argument(
        "source",
        nargs="+",
        help="a folder (recursive), a manifest (.txt/.csv/.tsv/.jsonl/.parquet with 'path' "
        "and optional 'id'), or audio files; local paths or URIs (s3://, gs://, ...)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder (local path or URI)")
    ray_group = p.add_argument_group("Ray cluster")
    ray_group.add_argument(
        "--address",
        help="existing cluster, e.g. 'auto' or 'ray://head:10001' (default: $RAY_ADDRESS, else "
        "start a local Ray)",
    )
    ray_group.add_argument("--num-cpus", type=int, help="logical CPUs of a new local Ray")
    ray_group.add_argument(
        "--num-actors", type=int, help="encoder actors (default: one per GPU, else 1)"
    )
    ray_group.add_argument(
        "--gpus-per-actor", type=float, help="default: 1 if the cluster has GPUs, else 0 (CPU)"
    )
    ray_group.add_argument(
        "--cpus-per-actor",
        type=float,
        help="default: 1 with GPUs, else the CPUs decoding leaves, shared among the actors",
    )
    ray_group.add_argument(
        "--decode-cpus", type=float, default=1.0, help="CPUs per decode task (default 1)"
    )
    batching = p.add_argument_group("batching and shards")
    batching.add_argument("--batch-size", type=int, default=8, help="clips per batch at most")
    batching.add_argument("--bucket-size", type=int, help="clips per actor call (default 8x batch)")
    batching.add_argument("--max-batch-seconds", type=float, help="cap on padded audio per batch")
    batching.add_argument("--shard-size", type=int, default=1000, help="clips per part file")
    codes = p.add_argument_group("codes")
    codes.add_argument("--num-quantizers", type=int, default=8)
    rate = codes.add_mutually_exclusive_group()
    rate.add_argument("--threshold", type=float, default=0.91)
    rate.add_argument("--target-frame-rate", type=float, help="Hz; per-clip threshold search")
    codes.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    codes.add_argument(
        "--mix-down", action="store_true", help="average the channels of multi-channel files"
    )
    model = p.add_argument_group("model (default: the built-in model)")
    model.add_argument("--checkpoint", help="FlexiCodec weights, same path on every node")
    model.add_argument("--config", help="official config YAML, same path on every node")
    model.add_argument("--sensevoice", help="SenseVoiceSmall folder, same path on every node")
    model.add_argument(
        "--tiny-seed",
        type=int,
        help="a RANDOMLY INITIALISED tiny model (seed N): for trying the pipeline out",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode_dataset)


def cmd_encode_dataset(args) -> int:
    if args.tiny_seed is not None:
        if args.checkpoint or args.config or args.sensevoice:
            raise InputError("--tiny-seed: not with --checkpoint/--config/--sensevoice")
        spec = {"tiny_seed": args.tiny_seed}
    elif args.checkpoint or args.config:
        spec = {"checkpoint": args.checkpoint, "config": args.config, "sensevoice": args.sensevoice}
    else:
        spec = "builtin"
    source = args.source[0] if len(args.source) == 1 else args.source
    if args.quiet:
        # Ray Data announces every execution plan at INFO; its loggers are set up when it is
        # first imported, so quieten them after that.
        require("ray.data")
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    report = encode_dataset(
        source,
        args.out,
        spec,
        num_quantizers=args.num_quantizers,
        merging_threshold=args.threshold,
        target_frame_rate=args.target_frame_rate,
        precision=args.precision,
        mix_down=args.mix_down,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        bucket_size=args.bucket_size,
        max_batch_seconds=args.max_batch_seconds,
        num_actors=args.num_actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        decode_cpus=args.decode_cpus,
        address=args.address,
        num_cpus=args.num_cpus,
        progress=not args.quiet,
    )
    print(report.summary())
    if report.files_failed:
        print(f"failed clips are listed in {join_uri(args.out, ERRORS_DIR)}/", file=sys.stderr)
    return 1 if report.files_failed else 0
