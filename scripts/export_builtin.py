"""Package a training checkpoint as the built-in model (`flexicodec_fast/assets/builtin/`).

    python scripts/export_builtin.py RUN_DIR/step_XXXXXXXX [--out DIR]

Writes (into `--out`, default the package's built-in folder) `model.safetensors` (fp16;
`prepare_model` upcasts to fp32) and `config.yaml`, dropping keys inference never reads (the
REPA head). Fails if the result exceeds 20 MB.
"""

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parents[1] / "flexicodec_fast" / "assets" / "builtin"
LIMIT = 20 * 1024 * 1024


def export(checkpoint: Path, out: Path = OUT) -> Path:
    """Write the bundle of the run checkpoint folder `checkpoint` into `out`."""
    state = load_file(str(checkpoint / "model.safetensors"))
    kept = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in state.items()
        if not k.startswith("repa_mlp.")
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(out / "model.safetensors"))
    shutil.copy(checkpoint / "config.yaml", out / "config.yaml")
    size = (out / "model.safetensors").stat().st_size
    params = sum(v.numel() for v in kept.values())
    print(f"wrote {out} ({params / 1e6:.2f} M values, {size / 1e6:.1f} MB)")
    if size > LIMIT:
        raise SystemExit(f"model.safetensors is {size} bytes, over the {LIMIT} byte limit")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a step_XXXXXXXX folder of a training run")
    parser.add_argument(
        "--out", type=Path, default=OUT, help="bundle folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    export(args.checkpoint, args.out)


if __name__ == "__main__":
    main()
