"""Fine-tune the built-in codec on new data with a new frozen recogniser, in one command.

    python scripts/builtin/finetune_human.py --recognizer /tmp/recognizer_mix \
        --data /tmp/synth/train /tmp/human/train --out runs/phase3 [--device cuda] \
        [--max-steps N] [--batch-size B] [--config scripts/builtin/phase3_human.yaml]

1. makes the recogniser a SenseVoice folder (`OUT/sensevoice`, the codec's semantic encoder);
2. writes the bundle without its `semantic_model.*` tensors (`OUT/init.safetensors`): a
   non-strict `init_from` loads every tensor whose name fits, and the old encoder's weights
   would otherwise replace the new one;
3. writes `OUT/run.yaml` (the config with those two paths, and the batch size) and trains
   into `OUT/run` (`--resume` continues it);
4. exports the last checkpoint as a bundle folder, `OUT/bundle` (`model.safetensors` +
   `config.yaml`, what `scripts/evaluate_builtin.py --model-dir` reads; copy it over
   `flexicodec_fast/assets/builtin/`, and the recogniser over `assets/recognizer/`, to ship).

`--assemble CODEC.safetensors CONFIG.yaml` trains nothing: it writes `OUT/bundle` from a
bundle without its semantic encoder (what `gpu_finetune.sh` brings back from a GPU) and the
recogniser's encoder weights.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from export_builtin import export  # noqa: E402

from flexicodec_fast.asr.sensevoice_folder import write_sensevoice_folder  # noqa: E402
from flexicodec_fast.loading import BUILTIN_DIR  # noqa: E402
from flexicodec_fast.reference.checkpoint import read_state_dict  # noqa: E402
from flexicodec_fast.train.config import load_train_config  # noqa: E402
from flexicodec_fast.train.trainer import train  # noqa: E402

SEMANTIC_PREFIX = "semantic_model."


def assemble(codec: Path, config: Path, sensevoice: Path, out: Path) -> Path:
    """`out/model.safetensors` (fp16) = `codec`'s tensors + the SenseVoice folder's encoder
    weights under `semantic_model.`; `out/config.yaml` = `config`."""
    state = load_file(str(codec))
    encoder = read_state_dict(sensevoice / "model.pt", "sensevoice model.pt")
    state.update({SEMANTIC_PREFIX + k: v.half() for k, v in encoder.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    shutil.copy(config, out / "config.yaml")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recognizer", type=Path, required=True, help="recogniser folder")
    parser.add_argument("--data", type=Path, nargs="+", help="training audio")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).with_name("phase3_human.yaml")
    )
    parser.add_argument("--init", type=Path, default=BUILTIN_DIR / "model.safetensors")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--workers", type=int, help="data loader processes (default: config's)")
    parser.add_argument(
        "--assemble", type=Path, nargs=2, metavar=("CODEC", "CONFIG"), help="see above"
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.assemble and not args.data:
        parser.error("--data is required (unless --assemble)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sensevoice = write_sensevoice_folder(args.recognizer, out / "sensevoice")
    if args.assemble:
        print(assemble(*args.assemble, sensevoice, out / "bundle"))
        return 0
    init = out / "init.safetensors"
    kept = {k: v for k, v in load_file(str(args.init)).items() if not k.startswith(SEMANTIC_PREFIX)}
    save_file(kept, str(init))
    training = {
        "sensevoice_path": str(sensevoice.resolve()),
        "init_from": {"checkpoint": str(init.resolve()), "strict": False},
    }
    data = {"batch_size": args.batch_size, "num_workers": args.workers}
    data = {k: v for k, v in data.items() if v is not None}
    if data:
        training["data"] = data
    run_yaml = out / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump({"base": str(args.config.resolve()), "training": training}, sort_keys=False)
    )
    result = train(
        load_train_config(run_yaml),
        args.data,
        out / "run",
        max_steps=args.max_steps,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    if result.checkpoint is None:
        raise SystemExit(f"no checkpoint in {out / 'run'}")
    export(Path(result.checkpoint), out / "bundle")
    print(f"trained to step {result.step}; bundle in {out / 'bundle'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
