"""A tiny FlexiCodec architecture for tests, CI-sized training and the demo fallback.

Same structure as the released model (SenseVoice SANM encoder, DAC, query aggregators, FSQ,
RVQ, bottleneck transformer), a few hundred thousand to a few million parameters.
"""

from __future__ import annotations

import torch

from .reference.config import FlexiCodecConfig, SenseVoiceConfig
from .reference.model import FlexiCodec

TINY_CONFIG = {
    "sample_rate": 16000,
    "encoder_dim": 8,
    "encoder_rates": [4, 4, 5, 8, 2],
    "latent_dim": 64,
    "decoder_dim": 64,
    "decoder_rates": [2, 8, 5, 4, 4],
    "n_codebooks": 4,
    "codebook_size": 64,
    "codebook_dim": 8,
    "quantizer_dropout": 1.0,
    "convnext_dim": 64,
    "convnext_layers": 1,
    "is_causal": False,
    "use_similarity_alignment": True,
    "similarity_threshold": 0.91,
    "use_dynamic_similarity_threshold": True,
    "semantic_downsample_factor": 1.33333,
    "semantic_model_type": "sensevoice",
    "use_bottleneck_transformer": True,
    "transformer_num_layers": 2,
    "transformer_dim": 64,
    "transformer_dim_feedforward": 128,
    "transformer_num_heads": 4,
    "max_tokens_per_group": 8,
    "use_query_token_aggregator": True,
    "agg_transformer_num_layers": 1,
    "agg_transformer_dim": 64,
    "agg_transformer_num_heads": 4,
    "agg_transformer_dim_feedforward": 128,
}
TINY_SENSEVOICE = SenseVoiceConfig(linear_units=256, num_blocks=2, attention_heads=4)


def tiny_config(**overrides) -> FlexiCodecConfig:
    return FlexiCodecConfig.from_dict({**TINY_CONFIG, **overrides})


def random_tiny_model(seed: int = 0, **overrides) -> FlexiCodec:
    """A randomly initialised tiny model (deterministic for a given seed), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FlexiCodec(tiny_config(**overrides), TINY_SENSEVOICE).eval()
