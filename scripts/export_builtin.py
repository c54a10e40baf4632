"""Package a training checkpoint as the built-in model (`flexicodec_fast/assets/builtin/`).

    python scripts/export_builtin.py RUN_DIR/step_XXXXXXXX

Writes `model.safetensors` (fp16; `prepare_model` upcasts to fp32) and `config.yaml`, dropping
keys inference never reads (the REPA head). Fails if the result exceeds 20 MB.
"""

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

OUT = Path(__file__).resolve().parents[1] / "flexicodec_fast" / "assets" / "builtin"
LIMIT = 20 * 1024 * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a step_XXXXXXXX folder of a training run")
    args = parser.parse_args(argv)
    state = load_file(str(args.checkpoint / "model.safetensors"))
    kept = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in state.items()
        if not k.startswith("repa_mlp.")
    }
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(OUT / "model.safetensors"))
    shutil.copy(args.checkpoint / "config.yaml", OUT / "config.yaml")
    size = (OUT / "model.safetensors").stat().st_size
    params = sum(v.numel() for v in kept.values())
    print(f"wrote {OUT} ({params / 1e6:.2f} M values, {size / 1e6:.1f} MB)")
    if size > LIMIT:
        raise SystemExit(f"model.safetensors is {size} bytes, over the {LIMIT} byte limit")


if __name__ == "__main__":
    main()
