"""Official model objects as they are: a stand-in for the official `FlexiCodec` module (an
`nn.Module` holding fixture A's weights under the official keys, with the attributes the
official constructor sets) converts into ours and gives the official implementation's codes
and audio."""

import pytest
import torch
import yaml
from tolerances import assert_close, assert_elementwise
from torch import nn

import flexicodec_fast as ff
from flexicodec_fast.model_input import OFFICIAL_ATTRIBUTES, resolve_model
from flexicodec_fast.reference.errors import InputError

# The official constructor's defaults for keys fixture A's config leaves out.
OFFICIAL_DEFAULTS = {
    "lambda_distill_loss": 15.0,
    "sensevoice_prepend_inputs": True,
    "decode_semantic_for_codec": True,
    "sensevoice_sim_layer_idx": None,
    "sensevoice_semantic_layer_idx": None,
}
BUFFERS = ("semantic_mean", "semantic_std")


class _Node(nn.Module):
    pass


def _official_config(fixture_dir) -> dict:
    return yaml.safe_load((fixture_dir / "config.yaml").read_text())["model"]


def official_stand_in(state_dict, model_config: dict, attributes: bool = True) -> nn.Module:
    """An nn.Module with `state_dict()` = the official keys, and (with `attributes`) what the
    official `FlexiCodec.__init__` leaves on its modules: its stored keywords, the attention
    modules' `num_heads`/`causal`/`context`, the FSQ `_levels` buffer, the ConvNeXt depthwise
    padding and SenseVoice's head count `h`."""
    root = _Node()
    for key, value in state_dict.items():
        *path, leaf = key.split(".")
        node = root
        for name in path:
            if name not in node._modules:
                node.add_module(name, _Node())
            node = node._modules[name]
        if key in BUFFERS:
            node.register_buffer(leaf, value.clone())
        else:
            node.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    if not attributes:
        return root
    config = {**OFFICIAL_DEFAULTS, **model_config}
    for name in OFFICIAL_ATTRIBUTES:
        setattr(root, name, config[name])
    context = config["transformer_context_frames"]
    agg_context = config.get("agg_transformer_context_frames") or context
    attention = {
        "bottleneck_transformer": (config["transformer_num_heads"], context),
        "semantic_aggregator.transformer": (config["agg_transformer_num_heads"], context),
        "acoustic_aggregator.transformer": (config["agg_transformer_num_heads"], agg_context),
    }
    for prefix, (heads, ctx) in attention.items():
        attn = root.get_submodule(f"{prefix}.transformer.layers.0.self_attn")
        attn.num_heads, attn.causal, attn.context = heads, False, ctx
    root.get_submodule("semantic_vq.fsq").register_buffer(
        "_levels", torch.tensor([8, 8, 8, 8, 8], dtype=torch.int32), persistent=False
    )
    for i in range(1, config["convnext_layers"] + 1):
        root.get_submodule(f"convnext_encoder.{i}.dwconv").padding = (3,)
    root.get_submodule("semantic_model.encoder.encoders0.0.self_attn").h = 4
    return root


@pytest.fixture()
def stand_in(fixture_dir, fixture_state_dict):
    return official_stand_in(fixture_state_dict, _official_config(fixture_dir))


def _nodither(fixture_outputs, clip):
    prefix = f"{clip}/nodither/th0.91/nq4/"
    return {
        name: fixture_outputs[prefix + name]
        for name in ("token_lengths", "semantic_codes", "acoustic_codes", "decoded_audio")
        if prefix + name in fixture_outputs
    }


@pytest.mark.parametrize("clip", ("clipA", "clipC"))
def test_official_dict_with_official_module_gives_the_official_codes_and_audio(
    stand_in, fixture_clips, fixture_outputs, clip
):
    official = {"model": stand_in, "feature_extractor": object(), "type": "sensevoice"}
    model = resolve_model(official)
    enc = ff.fast_encode(fixture_clips[clip][None], model, num_quantizers=4)
    want = _nodither(fixture_outputs, clip)
    for name in ("token_lengths", "semantic_codes", "acoustic_codes"):
        assert torch.equal(enc[name], want[name].to(enc[name].dtype)), name
    audio = ff.fast_decode(
        model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
    )
    want_audio = want["decoded_audio"]
    assert audio.shape == want_audio.shape
    # The conformance tolerance (tests/test_conformance.py).
    assert_elementwise(audio, want_audio, "official_audio")
    assert_close(audio, want_audio, "official_audio")


def test_conversion_is_cached_and_follows_parameter_changes(stand_in):
    first = resolve_model(stand_in)
    assert resolve_model({"model": stand_in}) is first
    key = "dac.decoder.model.0.bias"
    with torch.no_grad():
        stand_in.get_parameter(key).add_(1.0)
    second = resolve_model(stand_in)
    assert second is not first
    assert torch.equal(second.state_dict()[key], stand_in.get_parameter(key))
    assert not torch.equal(first.state_dict()[key], second.state_dict()[key])


def test_config_attribute_replaces_the_stored_keywords(
    fixture_dir, fixture_state_dict, fixture_clips, fixture_outputs
):
    bare = official_stand_in(fixture_state_dict, {}, attributes=False)
    with pytest.raises(InputError) as err:
        resolve_model(bare)
    message = str(err.value)
    for name in ("similarity_threshold_lower", "transformer_num_heads", "fsq_config", "is_causal"):
        assert name in message
    assert 'module.config = yaml.safe_load(open(config_path))["model"]' in message
    bare.config = yaml.safe_load((fixture_dir / "config.yaml").read_text())
    enc = ff.fast_encode(fixture_clips["clipB"][None], resolve_model(bare), num_quantizers=4)
    want = _nodither(fixture_outputs, "clipB")
    for name in ("token_lengths", "semantic_codes", "acoustic_codes"):
        assert torch.equal(enc[name], want[name].to(enc[name].dtype)), name


def test_ours_and_the_dict_layout_pass_through(fixture_dir):
    model = ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )
    assert resolve_model(model) is model
    assert resolve_model({"model": model, "feature_extractor": None}) is model


def test_other_objects_are_refused_with_what_is_missing():
    with pytest.raises(InputError) as err:
        resolve_model(nn.Linear(2, 2))
    message = str(err.value)
    assert "Linear" in message and "dac.encoder.block.0.weight_v" in message
    # The messages of the non-module cases are those of fast._resolve_model.
    expected = "model: expected the FlexiCodec returned by flexicodec_fast.prepare_model, got "
    for value, name in (("model.safetensors", "str"), ({"nothing": 1}, "dict"), (None, "NoneType")):
        with pytest.raises(InputError) as err:
            resolve_model(value)
        assert str(err.value) == expected + name
