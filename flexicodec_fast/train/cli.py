"""`flexicodec-fast train`: train or fine-tune FlexiCodec with the reference model.

flexicodec-fast train --config tiny --data wavs/ --out runs/tiny --max-steps 20
flexicodec-fast train --config tiny --data wavs/ --out runs/tiny --max-steps 40 --resume
torchrun --nproc_per_node 2 -m flexicodec_fast.train.cli --config tiny --data wavs/ --out runs/ddp
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

HELP = "train or fine-tune a FlexiCodec (reference model, GAN recipe of the paper)"


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--config",
        required=True,
        help="training YAML file, or a shipped config name: tiny (CI-sized), released, "
        "tiny_bsq, tiny_focal, tiny_semantic_rvq, tiny_fixed_window",
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        type=Path,
        help="folder(s) of audio files (recursive) and/or list files (one path per line)",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log)")
    p.add_argument("--max-steps", type=int, help="train until this step (default: the config's)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `train` subcommand on an `argparse` subparsers object."""
    return configure_parser(
        subparsers.add_parser(
            "train",
            help=HELP,
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def cmd_train(args) -> int:
    from .config import load_train_config
    from .trainer import train

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    config = load_train_config(args.config)
    result = train(
        config,
        args.data,
        args.out,
        max_steps=args.max_steps,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    if rank == 0:
        where = f"; last checkpoint {result.checkpoint}" if result.checkpoint else ""
        print(f"trained to step {result.step} in {result.run_dir}{where}")
    return 0


def main(argv=None) -> int:
    """`python -m flexicodec_fast.train.cli ARGS` (what torchrun starts) = `flexicodec-fast
    train ARGS`."""
    parser = configure_parser(
        argparse.ArgumentParser(
            prog="flexicodec-fast train",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    args = parser.parse_args(argv)
    from ..reference.errors import FlexiCodecError

    try:
        return args.func(args)
    except FlexiCodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
