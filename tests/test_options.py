"""EncodeOptions: validated once, resolved against a model, recorded as settings."""

import dataclasses

import pytest

from flexicodec_fast import EncodeOptions, InputError
from flexicodec_fast.options import attention_bands
from flexicodec_fast.tiny import random_tiny_model


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_quantizers=0), "num_quantizers: expected an int >= 1"),
        (dict(num_quantizers=2.0), "num_quantizers"),
        (dict(num_quantizers=True), "num_quantizers"),
        (
            dict(merging_threshold=1.5),
            r"merging_threshold: expected a cosine similarity in \[-1, 1\]",
        ),
        (dict(merging_threshold=float("nan")), "merging_threshold"),
        (dict(merging_threshold="0.9"), "merging_threshold"),
        (dict(target_frame_rate=0), r"target_frame_rate: expected a number in \(0, 12.5\]"),
        (dict(target_frame_rate=13), "target_frame_rate"),
        (dict(precision="fp16"), "precision: expected one of"),
        (dict(backend="cuda"), "backend: expected one of"),
        (dict(attention_window=0), "attention_window"),
        (dict(dither=-1.0), "dither"),
        (dict(mix_down=1), "mix_down"),
    ],
)
def test_bad_options_name_the_setting(kwargs, match):
    with pytest.raises(InputError, match=match):
        EncodeOptions(**kwargs)


def test_thresholds_at_the_ends_of_the_cosine_range_are_allowed():
    assert EncodeOptions(merging_threshold=-1).merging_threshold == -1
    assert EncodeOptions(merging_threshold=1.0).merging_threshold == 1.0


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EncodeOptions().num_quantizers = 3


def test_for_model_resolves_quantizers():
    model = random_tiny_model(seed=0)
    most = model.max_num_quantizers
    assert EncodeOptions(num_quantizers=None).for_model(model).num_quantizers == most
    assert EncodeOptions(num_quantizers=2).for_model(model).num_quantizers == 2
    with pytest.warns(UserWarning, match=f"using all {most}"):
        assert EncodeOptions(num_quantizers=most + 4).for_model(model).num_quantizers == most


def test_settings_record_what_decides_the_codes():
    settings = EncodeOptions(num_quantizers=3, backend="torch").settings()
    assert "backend" not in settings
    assert settings["num_quantizers"] == 3 and settings["merging_threshold"] == 0.91
    # Under a target frame rate the per-item search replaces the threshold.
    by_rate = EncodeOptions(target_frame_rate=6.0, merging_threshold=0.8).settings()
    assert by_rate["merging_threshold"] is None
    assert by_rate == EncodeOptions(target_frame_rate=6.0).settings()


def test_attention_bands_from_seconds():
    bands = attention_bands(2.0)
    # SenseVoice rows at 1000/60 per second, interleaved aggregator rows at most 25,
    # bottleneck frames 12.5.
    assert (bands.sensevoice, bands.aggregator, bands.bottleneck) == (34, 50, 25)
    assert attention_bands(None) is None


def test_given_options_or_keywords():
    mine = EncodeOptions(num_quantizers=2)
    assert EncodeOptions.given(mine, num_quantizers=5) is mine
    assert EncodeOptions.given(None, num_quantizers=5) == EncodeOptions(num_quantizers=5)
    with pytest.raises(InputError, match="options: expected an EncodeOptions or None"):
        EncodeOptions.given({"num_quantizers": 2})
