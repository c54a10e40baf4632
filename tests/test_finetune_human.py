"""scripts/builtin/finetune_human.py: the fine-tuned bundle's frozen semantic encoder is the
new recogniser's, not the old bundle's (a non-strict init would load the old one over it)."""

import importlib.util
from pathlib import Path

import soundfile as sf
import torch
from safetensors.torch import load_file

from flexicodec_fast.asr.recognizer import DEFAULT_RECOGNIZER_DIR, load_recognizer, save_recognizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "builtin" / "finetune_human.py"


def test_finetuned_bundle_carries_the_new_recognizer(tmp_path, fixture_clips):
    recognizer = load_recognizer(DEFAULT_RECOGNIZER_DIR)
    with torch.no_grad():
        for p in recognizer.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_recognizer(recognizer, tmp_path / "rec")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("clipA", "clipC"):
        sf.write(data / f"{name}.wav", fixture_clips[name][:16000].numpy(), 16000)
    spec = importlib.util.spec_from_file_location("finetune_human", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    args = ["--recognizer", str(tmp_path / "rec"), "--data", str(data), "--out", str(out)]
    assert script.main([*args, "--max-steps", "1", "--batch-size", "2", "--quiet"]) == 0
    bundle = load_file(str(out / "bundle" / "model.safetensors"))
    new = load_file(str(tmp_path / "rec" / "recognizer.safetensors"))
    semantic = {
        k.removeprefix("semantic_model."): v for k, v in bundle.items() if "semantic_model." in k
    }
    assert semantic and set(semantic) == {k for k in new if not k.startswith("ctc.")}
    for key, value in semantic.items():
        assert torch.equal(value, new[key]), key
