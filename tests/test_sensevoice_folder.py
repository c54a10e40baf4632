"""A recogniser folder made into the SenseVoice folder a codec loads: the bundled recogniser
gives exactly the built-in codec's semantic encoder."""

import torch
from safetensors.torch import load_file, save_file

from flexicodec_fast import prepare_model
from flexicodec_fast.asr.recognizer import DEFAULT_RECOGNIZER_DIR
from flexicodec_fast.asr.sensevoice_folder import main
from flexicodec_fast.loading import BUILTIN_DIR


def test_bundled_recognizer_folder_is_the_builtin_semantic_encoder(tmp_path):
    folder = tmp_path / "sv"
    assert main([str(DEFAULT_RECOGNIZER_DIR), str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["am.mvn", "config.yaml", "model.pt"]
    # The built-in checkpoint without its semantic encoder, which the folder must supply.
    own = {
        k: v
        for k, v in load_file(str(BUILTIN_DIR / "model.safetensors")).items()
        if not k.startswith("semantic_model.")
    }
    save_file(own, str(tmp_path / "codec.safetensors"))
    rebuilt = prepare_model(
        tmp_path / "codec.safetensors",
        BUILTIN_DIR / "config.yaml",
        sensevoice_small_path=folder,
        device="cpu",
    )
    builtin = prepare_model(device="cpu")
    want = builtin.state_dict()
    got = rebuilt.state_dict()
    semantic = [k for k in want if k.startswith("semantic_model.")]
    assert semantic and sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # The normalisation too (a buffer of the front end).
    clip = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.equal(
        builtin.encode(clip, num_quantizers=7)["semantic_codes"],
        rebuilt.encode(clip, num_quantizers=7)["semantic_codes"],
    )
