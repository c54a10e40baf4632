"""Checkpoint and config loading: official key layouts, fp16, both weight-norm spellings,
other model dimensions, and clear errors for files that do not fit."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from tolerances import assert_elementwise

import flexicodec_fast as ff
from flexicodec_fast.reference.checkpoint import UNUSED_PREFIXES, build_from_state_dicts
from flexicodec_fast.reference.config import FlexiCodecConfig, SenseVoiceConfig
from flexicodec_fast.reference.model import FlexiCodec


def _write_config(path, model: dict):
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def test_full_size_manifest_loads_with_nothing_missing(fixture_dir):
    manifest = json.loads(
        (fixture_dir.parent / "official_full_state_dict_manifest.json").read_text()
    )
    entries = manifest["state_dict"]
    assert len(entries) == manifest["num_state_dict_entries"] == 1897
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v["shape"], generator=gen, dtype=getattr(torch, v["dtype"]))
        for k, v in entries.items()
    }
    config = FlexiCodecConfig.from_dict(manifest["config"])
    model, report = build_from_state_dicts(config, state)
    used = {k for k in entries if not k.startswith(UNUSED_PREFIXES)}
    assert set(model.state_dict()) == used
    assert set(report.skipped) == set(entries) - used
    assert all(k.startswith(UNUSED_PREFIXES) for k in report.skipped)
    for key in (
        "dac.decoder.model.1.block.1.weight_v",
        "semantic_model.encoder.encoders.48.norm1.weight",
    ):
        assert torch.equal(model.state_dict()[key], state[key])
    assert (
        model.semantic_model.cfg.num_blocks == 50 and model.semantic_model.cfg.linear_units == 2048
    )


def test_fp16_checkpoint_and_new_weight_norm_spelling(fixture_dir, fixture_state_dict, tmp_path):
    state = {}
    for k, v in fixture_state_dict.items():
        for old, new in (
            ("weight_g", "parametrizations.weight.original0"),
            ("weight_v", "parametrizations.weight.original1"),
        ):
            if k.endswith(old):
                k = k[: -len(old)] + new
        state[k] = v.half()
    save_file(state, str(tmp_path / "half.safetensors"))
    model = ff.prepare_model(
        tmp_path / "half.safetensors", fixture_dir / "config.yaml", device="cpu"
    )
    assert model.load_report.upcast_dtypes == {"float16"}
    key = "dac.encoder.block.0.weight_v"
    assert torch.equal(model.state_dict()[key], fixture_state_dict[key].half().float())


def test_sensevoice_weights_from_separate_folder(fixture_dir, fixture_state_dict, tmp_path):
    prefix = "semantic_model."
    codec = {k: v for k, v in fixture_state_dict.items() if not k.startswith(prefix)}
    save_file(codec, str(tmp_path / "codec.safetensors"))
    folder = tmp_path / "SenseVoiceSmall"
    folder.mkdir()
    torch.save(
        {k[len(prefix) :]: v for k, v in fixture_state_dict.items() if k.startswith(prefix)},
        folder / "model.pt",
    )
    (folder / "config.yaml").write_text((fixture_dir / "sensevoice_config.yaml").read_text())
    (folder / "am.mvn").write_text((fixture_dir / "am.mvn").read_text())
    model = ff.prepare_model(
        tmp_path / "codec.safetensors", fixture_dir / "config.yaml", folder, "cpu"
    )
    reference = ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )
    assert "model.pt" in model.load_report.sensevoice_source
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


VARIANT = {
    "sample_rate": 16000,
    "encoder_dim": 4,
    "encoder_rates": [4, 4, 5, 8, 2],
    "latent_dim": 48,
    "decoder_dim": 32,
    "decoder_rates": [2, 8, 5, 4, 4],
    "n_codebooks": 3,
    "codebook_size": 32,
    "codebook_dim": 4,
    "fsq_config": {"levels": [7, 5, 5, 4]},
    "convnext_dim": 40,
    "convnext_layers": 2,
    "is_causal": False,
    "use_similarity_alignment": True,
    "similarity_threshold": 0.9,
    "semantic_downsample_factor": 1.33333,
    "semantic_model_type": "sensevoice",
    "use_bottleneck_transformer": True,
    "transformer_num_layers": 2,
    "transformer_dim": 32,
    "transformer_dim_feedforward": 64,
    "transformer_num_heads": 2,
    "max_tokens_per_group": 3,
    "use_query_token_aggregator": True,
    "agg_transformer_num_layers": 1,
    "agg_transformer_dim": 64,
    "agg_transformer_num_heads": 2,
    "agg_transformer_dim_feedforward": 96,
}
SMALL_SENSEVOICE = SenseVoiceConfig(
    output_size=512, attention_heads=4, linear_units=64, num_blocks=2
)


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory):
    """A model with other dimensions: projections around both transformers, odd FSQ levels,
    two ConvNeXt blocks, max 3 frames per group; saved as official-layout files."""
    folder = tmp_path_factory.mktemp("variant")
    torch.manual_seed(3)
    model = FlexiCodec(FlexiCodecConfig.from_dict(VARIANT), SMALL_SENSEVOICE)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    return folder / "model.safetensors", _write_config(folder / "config.yaml", VARIANT), model


def test_variant_has_projection_keys_and_loads(variant_files):
    ckpt, config, built = variant_files
    keys = set(built.state_dict())
    for key in (
        "bottleneck_transformer.input_proj.weight",
        "bottleneck_transformer.output_projs.0.weight",
        "semantic_aggregator.transformer.input_proj.weight",
        "semantic_aggregator.transformer.output_projs.0.weight",
    ):
        assert key in keys
    assert "acoustic_aggregator.transformer.input_proj.weight" not in keys  # width = latent_dim
    assert built.state_dict()["bottleneck_transformer.input_proj.weight"].shape == (32, 48)
    assert built.state_dict()["semantic_vq.fsq.project_in.weight"].shape == (4, 40)
    model = ff.prepare_model(ckpt, config, device="cpu")
    assert model.semantic_vq.fsq.codebook_size == 7 * 5 * 5 * 4


def test_variant_encodes_and_decodes(variant_files):
    *_, model = variant_files
    model.eval()
    torch.manual_seed(0)
    audio = torch.randn(2, 24000) * 0.1
    lens = torch.tensor([24000, 17001])
    with torch.no_grad():
        enc = model.encode(audio, lens, num_quantizers=4, merging_threshold=0.99)
        assert enc["token_lengths"].max() <= 3
        assert enc["semantic_codes"].max() < 700 and enc["acoustic_codes"].max() < 32
        single = model.encode(audio[1:, :17001], None, 4, 0.99)
        groups = int(single["total_frames"][0])
        for key in ("token_lengths", "semantic_codes", "acoustic_codes"):
            assert torch.equal(enc[key][1, ..., :groups], single[key][0])
        wav = model.decode(enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    frames = enc["token_lengths"].sum(dim=1)
    assert wav.shape == (2, 1, 1280 * int(frames.max()) - 16)


def test_missing_keys_are_named(fixture_dir, fixture_state_dict, tmp_path):
    state = dict(fixture_state_dict)
    del state["bottleneck_transformer.transformer.layers.0.linear1.weight"]
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(ff.CheckpointError, match="missing 1 key.*layers.0.linear1.weight"):
        ff.prepare_model(tmp_path / "m.safetensors", fixture_dir / "config.yaml", device="cpu")


def test_config_that_does_not_fit_checkpoint(fixture_dir, tmp_path):
    cfg = yaml.safe_load((fixture_dir / "config.yaml").read_text())
    cfg["model"]["convnext_dim"] = 32
    _write_config(tmp_path / "c.yaml", cfg["model"])
    with pytest.raises(ff.CheckpointError, match="shape mismatch"):
        ff.prepare_model(fixture_dir / "model.safetensors", tmp_path / "c.yaml", device="cpu")
    cfg["model"]["transformer_num_layers"] = 3
    cfg["model"]["convnext_dim"] = 64
    _write_config(tmp_path / "c.yaml", cfg["model"])
    with pytest.raises(ff.CheckpointError, match="missing .* key"):
        ff.prepare_model(fixture_dir / "model.safetensors", tmp_path / "c.yaml", device="cpu")


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "no such file"),
        (b"not a safetensors file", "cannot read"),
    ],
)
def test_missing_or_corrupt_checkpoint(fixture_dir, tmp_path, content, match):
    path = tmp_path / "x.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ff.CheckpointError, match=match):
        ff.prepare_model(path, fixture_dir / "config.yaml", device="cpu")


def test_bad_config_files(fixture_dir, tmp_path):
    with pytest.raises(ff.CheckpointError, match="no such file"):
        ff.prepare_model(fixture_dir / "model.safetensors", tmp_path / "none.yaml", device="cpu")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ff.CheckpointError, match="not valid YAML"):
        ff.prepare_model(fixture_dir / "model.safetensors", tmp_path / "bad.yaml", device="cpu")
    _write_config(tmp_path / "u.yaml", {"latent_dim": 64, "no_such_option": 1})
    with pytest.raises(ff.CheckpointError, match="unknown key.*no_such_option"):
        ff.prepare_model(fixture_dir / "model.safetensors", tmp_path / "u.yaml", device="cpu")


def test_prepare_model_without_files_says_what_to_pass(monkeypatch, tmp_path):
    import flexicodec_fast.loading as loading

    monkeypatch.setattr(loading, "BUILTIN_DIR", tmp_path)
    with pytest.raises(ff.CheckpointError, match="built-in default model"):
        ff.prepare_model()
    with pytest.raises(ff.CheckpointError, match="go together"):
        ff.prepare_model(ckpt_path="x.safetensors")


def test_builtin_model_loads_offline_and_codes_speech_as_the_reference():
    """The built-in model on the first 2 s of the bundled demo clip: the fast pipeline's codes
    (all 1 + 6 codebooks) are the reference model's, and so is the decoded audio, to fp32
    rounding. The default threshold stays clear of every similarity (no near-tie)."""
    import soundfile as sf

    model = ff.prepare_model(device="cpu")
    assert model.config.transformer_window == 16  # the local-attention built-in model
    assert model.load_report.upcast_dtypes == {"float16"}
    demo_clip = Path(ff.__file__).parent / "assets" / "demo.wav"
    clip, rate = sf.read(str(demo_clip), dtype="float32", frames=32000)
    audio = torch.from_numpy(clip)[None]
    assert rate == 16000 and audio.std() > 0.01
    options = dict(num_quantizers=7, merging_threshold=0.91)
    with torch.inference_mode():
        ref = model.encode(audio, None, **options)
        want = model.decode(ref["semantic_codes"], ref["acoustic_codes"], ref["token_lengths"])
    assert (ref["similarity"] - 0.91).abs().min() > 1e-3  # far from a near-tie (NEAR_TIE)
    assert 0 < int(ref["total_frames"][0]) < 25 and ref["acoustic_codes"].shape[1] == 6
    enc = ff.fast_encode(audio, model, **options)
    for key in ("token_lengths", "total_frames", "semantic_codes", "acoustic_codes"):
        assert torch.equal(enc[key], ref[key]), key
    got = ff.fast_decode(model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    assert_elementwise(got, want, "audio")


class Payload:
    """An arbitrary pickled object: a weights-only load must refuse it."""


def test_torch_checkpoint_is_read_weights_only(fixture_dir, fixture_state_dict, tmp_path):
    torch.save(fixture_state_dict, tmp_path / "m.pt")
    model = ff.prepare_model(tmp_path / "m.pt", fixture_dir / "config.yaml", device="cpu")
    assert torch.equal(
        model.state_dict()["semantic_vq.fsq.project_in.weight"],
        fixture_state_dict["semantic_vq.fsq.project_in.weight"],
    )

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ff.CheckpointError, match="cannot read"):
        ff.prepare_model(tmp_path / "evil.pt", fixture_dir / "config.yaml", device="cpu")
