"""scripts/builtin/finetune_human.py: the fine-tuned bundle's frozen semantic encoder is the
new recogniser's, not the old bundle's (a non-strict init would load the old one over it)."""

import importlib.util
from pathlib import Path

import pytest
import soundfile as sf
import torch
from dry_run import dry_run
from safetensors.torch import load_file

from flexicodec_fast.asr.recognizer import DEFAULT_RECOGNIZER_DIR, load_recognizer, save_recognizer
from flexicodec_fast.loading import BUILTIN_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "builtin" / "finetune_human.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("finetune_human", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


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
    script = _load_script()
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


@pytest.mark.slow
def test_gpu_finetune_dry_run_brings_back_what_assembles_the_bundle(tmp_path, fixture_clips):
    """scripts/builtin/gpu_finetune.sh --dry-run (CPU, 2 steps): its files, and the bundle
    `--assemble` makes of them is the fine-tuned bundle, tensor for tensor."""
    repo = SCRIPT.parents[2]
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ("flexicodec_fast", "reference", "kernels", "scripts", "pyproject.toml"):
        (work / entry).symlink_to(repo / entry)
    audio = work / "gpu_data" / "audio"
    audio.mkdir(parents=True)
    for name in ("clipA", "clipC"):
        sf.write(audio / f"{name}.wav", fixture_clips[name][:16000].numpy(), 16000)
    (work / "gpu_data" / "recognizer").symlink_to(DEFAULT_RECOGNIZER_DIR)
    out = tmp_path / "out"
    dry_run(work / "scripts" / "builtin" / "gpu_finetune.sh", out, cwd=work, timeout=600)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["codec.safetensors", "config.yaml", "finetune.log", "train_log.csv"]
    codec = load_file(str(out / "codec.safetensors"))
    assert codec and not any(k.startswith("semantic_model.") for k in codec)
    script = _load_script()
    args = ["--recognizer", str(DEFAULT_RECOGNIZER_DIR), "--out", str(tmp_path / "asm")]
    assemble = [str(out / "codec.safetensors"), str(out / "config.yaml")]
    assert script.main([*args, "--assemble", *assemble]) == 0
    bundle = load_file(str(tmp_path / "asm" / "bundle" / "model.safetensors"))
    builtin = load_file(str(BUILTIN_DIR / "model.safetensors"))
    assert sorted(bundle) == sorted(builtin)
    for key, value in bundle.items():
        want = codec[key] if key in codec else builtin[key]  # the encoder: the recogniser's
        assert torch.equal(value, want), key


def test_phase3g_is_phase3_with_the_gan_terms_after_a_discriminator_warm_up():
    """scripts/builtin/phase3g_human.yaml continues phase 3 with the adversarial terms on
    (isolated REPA), the fresh discriminator training alone first; nothing else differs but
    the length, checkpointing and learning rate."""
    from flexicodec_fast.train.config import load_train_config

    phase3 = load_train_config(SCRIPT.with_name("phase3_human.yaml")).training
    phase3g = load_train_config(SCRIPT.with_name("phase3g_human.yaml")).training
    assert phase3.discriminator_start > phase3.max_steps and not phase3.repa_isolated
    assert phase3g.discriminator_start == 0 and phase3g.repa_isolated
    assert 0 < phase3g.adversarial_start < phase3g.max_steps
    changed = {
        "max_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "discriminator_start",
        "adversarial_start",
        "repa_isolated",
        "optimizer",
    }
    assert {k: v for k, v in vars(phase3g).items() if k not in changed} == {
        k: v for k, v in vars(phase3).items() if k not in changed
    }
    assert phase3g.optimizer.lr < phase3.optimizer.lr


def test_phase3s_is_phase3_shorter_and_gentler():
    """scripts/builtin/phase3s_human.yaml (phase 3 continued with the similarity-trained
    recogniser) changes only the length, checkpointing and learning rate of phase 3."""
    from flexicodec_fast.train.config import load_train_config

    phase3 = load_train_config(SCRIPT.with_name("phase3_human.yaml")).training
    phase3s = load_train_config(SCRIPT.with_name("phase3s_human.yaml")).training
    changed = {"max_steps", "checkpoint_every", "keep_checkpoints", "optimizer"}
    assert {k: v for k, v in vars(phase3s).items() if k not in changed} == {
        k: v for k, v in vars(phase3).items() if k not in changed
    }
    assert phase3s.max_steps < phase3.max_steps and phase3s.optimizer.lr < phase3.optimizer.lr
