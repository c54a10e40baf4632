"""SenseVoice encoder (spec §2.2-2.3) against the official fixture; batch invariance; errors."""

import pytest
import torch
from tolerances import assert_close, assert_elementwise

from flexicodec_fast.reference.config import SenseVoiceConfig
from flexicodec_fast.reference.errors import CheckpointError, InputError
from flexicodec_fast.reference.sensevoice import (
    SENSEVOICE_UNUSED_PREFIXES,
    SenseVoiceEncoder,
    sensevoice_config_from_state_dict,
)

PREFIX = "semantic_model."
CLIPS = ("clipA", "clipB", "clipC")


def _sensevoice_weights(state_dict):
    return {
        k[len(PREFIX) :]: v
        for k, v in state_dict.items()
        if k.startswith(PREFIX) and not k[len(PREFIX) :].startswith(SENSEVOICE_UNUSED_PREFIXES)
    }


@pytest.fixture(scope="module")
def weights(fixture_state_dict):
    return _sensevoice_weights(fixture_state_dict)


@pytest.fixture(scope="module")
def encoder(fixture_dir, weights):
    model = SenseVoiceEncoder(SenseVoiceConfig.from_yaml(fixture_dir / "sensevoice_config.yaml"))
    model.load_state_dict(weights)
    return model.eval()


def test_config_inferred_from_weights(fixture_dir, fixture_state_dict, weights):
    from_yaml = SenseVoiceConfig.from_yaml(fixture_dir / "sensevoice_config.yaml")
    assert sensevoice_config_from_state_dict(weights) == from_yaml
    assert sensevoice_config_from_state_dict(fixture_state_dict, prefix=PREFIX) == from_yaml
    model = SenseVoiceEncoder(sensevoice_config_from_state_dict(weights))
    assert set(model.state_dict()) == set(weights)
    model.load_state_dict(weights)


def test_default_config_is_sensevoice_small():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in SenseVoiceEncoder().state_dict().items()}
    assert shapes["embed.weight"] == (16, 560)
    assert shapes["encoder.encoders0.0.self_attn.linear_q_k_v.weight"] == (1536, 560)
    assert shapes["encoder.encoders.48.self_attn.fsmn_block.weight"] == (512, 1, 11)
    assert shapes["encoder.encoders.48.feed_forward.w_1.weight"] == (2048, 512)
    assert "encoder.encoders.49.norm1.weight" not in shapes


@pytest.mark.parametrize("clip", CLIPS)
def test_matches_official(encoder, fixture_outputs, clip):
    ref = fixture_outputs[f"{clip}/semantic_feat_16p67hz"]
    with torch.no_grad():
        out = encoder(fixture_outputs[f"{clip}/fbank"][None])[0]
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert_elementwise(out, ref, "semantic_features", "reference")
    assert_close(out, ref, "semantic_features", "reference")


def test_batch_equals_items_and_ignores_padding(encoder, fixture_outputs):
    feats = fixture_outputs["batch/fbank"].clone()
    lens = fixture_outputs["batch/fbank_lens"]
    feats[0, lens[0] :] = torch.randn(feats.shape[1] - lens[0], feats.shape[2])
    with torch.no_grad():
        out = encoder(feats, lens)
        for i in range(2):
            single = encoder(feats[i : i + 1, : lens[i]])[0]
            assert_elementwise(out[i, : lens[i]], single, "semantic_features")
            assert torch.all(out[i, lens[i] :] == 0)


def test_full_length_item_in_a_masked_batch_equals_it_alone(encoder, fixture_outputs):
    """Beside a shorter item the batch runs the masked path; the item that fills the batch
    gets, bit for bit, its result alone (an all-ones mask row changes nothing), in either
    position, and that result is the official one."""
    feats = fixture_outputs["clipC/fbank"][None]
    length = feats.shape[1]
    with torch.no_grad():
        alone = encoder(feats)[0]
        for lens in ([length, length - 7], [length - 7, length]):
            batch = encoder(feats.expand(2, -1, -1), torch.tensor(lens))
            full = lens.index(length)
            assert torch.equal(batch[full], alone)
            assert batch[1 - full, length - 7 :].abs().max() == 0
    official = fixture_outputs["clipC/semantic_feat_16p67hz"]
    assert_elementwise(alone, official, "semantic_features", "reference")


@pytest.mark.parametrize(
    ("feats", "lens", "name"),
    [
        (torch.zeros(5, 560), None, "feats"),
        (torch.zeros(1, 5, 80), None, "feats"),
        (torch.zeros(1, 5, 560, dtype=torch.float64), None, "feats"),
        (torch.zeros(1, 0, 560), None, "feats"),
        (torch.zeros(2, 5, 560), torch.tensor([5]), "feat_lens"),
        (torch.zeros(2, 5, 560), torch.tensor([5, 6]), "feat_lens"),
        (torch.zeros(2, 5, 560), torch.tensor([5, 0]), "feat_lens"),
        (torch.zeros(2, 5, 560), torch.tensor([5.0, 5.0]), "feat_lens"),
    ],
)
def test_bad_input(encoder, feats, lens, name):
    with pytest.raises(InputError, match=name):
        encoder(feats, lens)


def test_config_inference_errors(weights):
    missing = {k: v for k, v in weights.items() if k != "encoder.after_norm.weight"}
    with pytest.raises(CheckpointError, match="after_norm"):
        sensevoice_config_from_state_dict(missing)
    gap = {k.replace("encoders.0.", "encoders.1."): v for k, v in weights.items()}
    with pytest.raises(CheckpointError, match="numbered"):
        sensevoice_config_from_state_dict(gap)
