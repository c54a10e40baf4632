"""A recogniser as the frozen semantic encoder of a codec: a SenseVoiceSmall-layout folder.

    python -m flexicodec_fast.asr.sensevoice_folder RECOGNIZER_DIR OUT_DIR

Training a codec (`flexicodec-fast train`, `training.sensevoice_path`) and `prepare_model(...,
sensevoice_small_path=)` read a folder with `model.pt` (the encoder's weights), `config.yaml`
(its `encoder_conf`) and `am.mvn` (the feature normalisation). A recogniser folder
(`recognizer.safetensors` + `recognizer.yaml`) becomes one by dropping its CTC head, which the
codec never uses, and keeping the CMVN its features were trained with (the bundled `am.mvn`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import yaml

from ..reference.frontend import DEFAULT_CMVN_PATH
from .recognizer import CONFIG_NAME, load_recognizer

# The recogniser's keys that are not SenseVoice encoder weights.
HEAD_PREFIX = "ctc."


def write_sensevoice_folder(recognizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `model.pt` (float32 encoder weights, no `ctc.*`), `config.yaml` and `am.mvn` of
    the recogniser in `recognizer_dir` into `out_dir` (created); returns `out_dir`."""
    recognizer_dir, out_dir = Path(recognizer_dir), Path(out_dir)
    recognizer = load_recognizer(recognizer_dir)
    state = {
        k: v.detach().float().contiguous()
        for k, v in recognizer.state_dict().items()
        if not k.startswith(HEAD_PREFIX)
    }
    conf = yaml.safe_load((recognizer_dir / CONFIG_NAME).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / "model.pt")
    layout = {"input_size": conf["input_size"], "encoder_conf": conf["encoder_conf"]}
    (out_dir / "config.yaml").write_text(yaml.safe_dump(layout, sort_keys=False))
    shutil.copyfile(DEFAULT_CMVN_PATH, out_dir / "am.mvn")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recognizer", type=Path, help="folder with recognizer.safetensors")
    parser.add_argument("out", type=Path, help="SenseVoice folder to write")
    args = parser.parse_args(argv)
    print(write_sensevoice_folder(args.recognizer, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
