"""Tiny models whose codes follow their input, for parity tests that must see small errors.

A freshly initialised model's LayerScales (0.01) and small learned rows (queries 0.02 randn,
the window decoder's token embedding 0) let the query rows dominate the aggregators'
outputs: its codes hardly change with the audio, so a wrong frame or mask could go unseen.
Its acoustic latents are tiny too (~0.01 a channel, a trained encoder's ~1: the built-in
model's 0.8), so a merged acoustic query, the group mean plus an N(0, 1) row, is the row
alone and the acoustic codes are the same for any audio. Training grows them all;
`responsive` sets them to a trained model's scale.
"""

import torch

from flexicodec_fast.reference.transformer import LayerScale

LEARNED_ROWS = ("query", "query_embedding", "mask_token", "token_embedding")
ACOUSTIC_GAIN = 50.0


def responsive(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` (in place) with every LayerScale at 1, the learned query, mask and
    token-embedding rows drawn from N(0, 1) (seeded) and the acoustic latents
    `ACOUSTIC_GAIN` times larger (the DAC encoder's last convolution scaled; its bias is
    zero when fresh)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LayerScale):
                module.scale.fill_(1.0)
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in LEARNED_ROWS:
                param.copy_(torch.randn(param.shape, generator=gen))
        last = model.dac.encoder.block[-1]
        last.weight_g.mul_(ACOUSTIC_GAIN)
        last.bias.mul_(ACOUSTIC_GAIN)
    return model
