"""The bf16 precision mode takes every discrete decision in fp32 (design §4).

bf16 runs SenseVoice and the transformers in bf16, so its continuous values are not the
fp32 ones: its decisions are compared with the fp32 reference's on its own continuous
inputs. Merging: the reference's segmentation of the bf16 mode's own semantic features, at a
threshold placed between one transition's fp32 and bf16 similarity, so that bf16 merging
would split there differently. Quantizers (ConvNeXt, FSQ, RVQ): the reference's on the bf16
mode's own aggregated tokens, where the same quantizers under bf16 autocast give other codes.
Official fixture A's model (random weights, the official architecture at a small width).
"""

import pytest
import soundfile as sf
import torch

import flexicodec_fast as ff
import flexicodec_fast.fast as fast_module
from flexicodec_fast.fast import fast_encode

NQ = 4


@pytest.fixture(scope="module")
def model(fixture_dir):
    return ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )


@pytest.fixture(scope="module")
def batch(fixture_dir):
    """Clips A (3 s) and C (2 s) as a ragged batch: (audio `[2, N]`, lengths `[2]`)."""
    clips = [
        torch.from_numpy(sf.read(str(fixture_dir / f"input_{n}.wav"), dtype="float32")[0])
        for n in ("clipA", "clipC")
    ]
    lens = torch.tensor([c.numel() for c in clips])
    audio = torch.zeros(2, int(lens.max()))
    for b, clip in enumerate(clips):
        audio[b, : clip.numel()] = clip
    return audio, lens


def _bf16_encode(model, batch, threshold):
    """bf16 `fast_encode` and the inputs its quantizers got: (enc, sem_tokens `[B, G, C]`,
    ac_tokens `[B, G, C]`, num_groups `[B]`)."""
    seen = []
    quantize = fast_module.quantize

    def recording(fast, sem_tokens, ac_tokens, num_groups, num_quantizers):
        seen.append((sem_tokens.clone(), ac_tokens.clone(), num_groups.clone()))
        return quantize(fast, sem_tokens, ac_tokens, num_groups, num_quantizers)

    audio, lens = batch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast_module, "quantize", recording)
        enc = fast_encode(
            audio,
            model,
            num_quantizers=NQ,
            merging_threshold=threshold,
            audio_lens=lens,
            precision="bf16",
            backend="torch",
        )
    ((sem_tokens, ac_tokens, num_groups),) = seen
    return enc, sem_tokens, ac_tokens, num_groups


def _split_threshold(model, sem, frames) -> float:
    """A threshold halfway between the fp32 and the bf16 similarity of the transition where
    they differ most (sem `[B, C, T]`, frames `[B]`)."""
    fp32 = model.merge(sem, frames, 0.0).similarity.flatten()
    bf16 = model.merge(sem.bfloat16(), frames, 0.0).similarity.float().flatten()
    worst = int((fp32 - bf16).abs().argmax())
    return float((fp32[worst] + bf16[worst]) / 2)


@pytest.fixture(scope="module")
def unmerged(model, batch):
    """The bf16 encode with every frame a token (threshold 1): the most tokens to quantize."""
    return _bf16_encode(model, batch, 1.0)


@pytest.fixture(scope="module")
def merged(model, batch, unmerged):
    """The bf16 encode at a threshold that splits one transition differently in bf16 (the
    semantic features do not depend on the threshold): (threshold, encode)."""
    enc = unmerged[0]
    frames = enc["token_lengths"].sum(dim=1)
    threshold = _split_threshold(model, enc["semantic_features"], frames)
    return threshold, _bf16_encode(model, batch, threshold)


def test_bf16_merges_on_fp32_similarities(model, merged):
    """The similarities of the bf16 mode's own semantic features, computed by the fp32
    reference, are the ones it reports, bit for bit, and its groups are the reference's on
    them; merging on bf16 similarities would group the frames otherwise."""
    threshold, (enc, *_) = merged
    sem = enc["semantic_features"]
    frames = enc["token_lengths"].sum(dim=1)
    seg = model.merge(sem, frames, threshold)
    assert torch.equal(enc["similarity"], seg.similarity)
    assert torch.equal(enc["token_lengths"], seg.token_lengths)
    assert (seg.num_groups < frames).all() and (seg.token_lengths[:, 0] > 0).all()
    in_bf16 = model.merge(sem.bfloat16(), frames, threshold)
    assert not torch.equal(in_bf16.token_lengths, seg.token_lengths)


def test_bf16_quantizes_in_fp32(model, unmerged):
    """The bf16 mode's codes are the fp32 reference quantizers' on the bf16 mode's own
    tokens; the same quantizers under bf16 autocast change some of both kinds."""
    enc, sem_tokens, ac_tokens, num_groups = unmerged
    assert sem_tokens.dtype == ac_tokens.dtype == torch.float32
    live = torch.arange(sem_tokens.shape[1]) < num_groups[:, None]

    def reference_codes():
        with torch.inference_mode():
            semantic, decoded = model.quantize_semantic(sem_tokens.transpose(1, 2), num_groups)
            _, acoustic, *_ = model.dac.quantizer(ac_tokens.transpose(1, 2) - decoded, NQ - 1)
        return semantic, torch.where(live[:, None], acoustic, 0)

    semantic, acoustic = reference_codes()
    assert torch.equal(enc["semantic_codes"], semantic)
    assert torch.equal(enc["acoustic_codes"], acoustic)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        semantic16, acoustic16 = reference_codes()
    assert not torch.equal(semantic16, semantic)
    assert not torch.equal(acoustic16, acoustic)
