"""Related-codec options wired into the model, the training YAML, the trainer and the CLI
(issue #8): each shipped tiny option config trains from the CLI and lowers the loss on a
fixed batch; the checkpoint loads with prepare_model and round-trips with the option's code
ranges; the fast path equals the reference; bad option values are clear errors."""

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from responsive import responsive
from safetensors.torch import load_file
from signals import harmonic_tone, noise_batch
from tolerances import assert_elementwise

import flexicodec_fast as ff
from flexicodec_fast.reference.config import FlexiCodecConfig
from flexicodec_fast.reference.errors import CheckpointError, InputError
from flexicodec_fast.reference.training import training_step_outputs
from flexicodec_fast.tiny import TINY_CONFIG, random_tiny_model
from flexicodec_fast.train.cli import main as train_main
from flexicodec_fast.train.config import load_train_config
from flexicodec_fast.train.data import SkippedFileWarning
from flexicodec_fast.train.trainer import _model_from_checkpoint, build_initial_model

OPTIONS = ("tiny_bsq", "tiny_focal", "tiny_semantic_rvq", "tiny_fixed_window")
STEPS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wavs")
    for i in range(4):
        sf.write(folder / f"clip{i}.wav", harmonic_tone(1.0 + 0.2 * i, i), 16000)
    return folder


def _config_file(path: Path, base: str, **training) -> Path:
    """`base` with the discriminator off (half the step time), no dither, no bypass and a
    fixed threshold, so that the loss on a fixed batch is comparable across steps."""
    settings = {
        "discriminator_start": 1000,
        "dither": 0.0,
        "bypass_quantize_rate": 0.0,
        "fixed_threshold": 0.9,
        "checkpoint_every": STEPS,
        **training,
    }
    path.write_text(yaml.safe_dump({"base": base, "training": settings}))
    return path


def _train(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        return train_main([*args, "--quiet"])


def _generator_loss(model, cfg, batch) -> float:
    """Every weighted generator term but the adversarial ones, SPD at its full weight,
    with the random draws (masks, window, dropout) fixed."""
    w = cfg.training.loss_weights
    forward = cfg.forward_config()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(321)
        losses = training_step_outputs(model.train(), batch, forward).losses
    return sum(getattr(w, k) * float(v) for k, v in losses.items())


def _code_ranges(model, enc, clip_frames):
    """Check the codes of `enc` against the model's option, formula by formula."""
    mc = model.config
    sem = enc["semantic_codes"]
    size = 2**mc.bsq_bits if mc.semantic_quantizer == "bsq" else math.prod(mc.fsq_levels)
    assert sem.dtype == torch.int32 and 0 <= int(sem.min()) and int(sem.max()) < size
    ac = enc["acoustic_codes"]
    assert 0 <= int(ac.min()) and int(ac.max()) < mc.codebook_size
    lengths = enc["token_lengths"]
    assert int(lengths.sum()) == clip_frames
    if mc.aggregator == "fixed_window":
        w = mc.window
        expected = [w] * (clip_frames // w) + ([clip_frames % w] if clip_frames % w else [])
        assert lengths[0].tolist() == expected


@pytest.mark.parametrize("name", OPTIONS)
def test_option_trains_from_the_cli_and_round_trips(name, data_dir, tmp_path):
    config = _config_file(tmp_path / "cfg.yaml", name)
    cfg = load_train_config(config)
    run = tmp_path / "run"
    args = ["--config", str(config), "--data", str(data_dir), "--out", str(run)]
    assert _train([*args, "--max-steps", str(STEPS)]) == 0
    step = run / f"step_{STEPS:08d}"

    with (run / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == STEPS
    mc = cfg.model
    for term, on in (
        ("entropy", mc.semantic_quantizer == "bsq"),
        ("spd", mc.acoustic_quantizer == "semantic_rvq"),
        ("mae", mc.aggregator == "fixed_window"),
        ("ar", mc.aggregator == "fixed_window"),
    ):
        values = [float(r[term]) for r in rows]
        assert all(v != 0.0 for v in values) if on else values == [0.0] * STEPS, term

    # The loss on a fixed batch went down: initial weights (same seed) against trained.
    trained = _model_from_checkpoint(step, cfg)
    initial = build_initial_model(cfg)
    if mc.acoustic_quantizer == "semantic_rvq":
        initial.semantic_vocab.copy_(trained.semantic_vocab)
    batch = torch.from_numpy(np.stack([harmonic_tone(0.8, 0), harmonic_tone(0.8, 3)]))
    before, after = _generator_loss(initial, cfg, batch), _generator_loss(trained, cfg, batch)
    assert after < 0.9 * before, (before, after)

    saved = load_file(str(step / "model.safetensors"))
    if mc.acoustic_quantizer == "semantic_rvq":
        # The vocabulary was fitted (k-means centroids are SenseVoice frames' means).
        assert saved["semantic_vocab"].shape == (mc.codebook_size, 512)
        assert bool(saved["semantic_vocab"].abs().sum(1).gt(0).all())

    model = ff.prepare_model(step / "model.safetensors", step / "config.yaml", device="cpu")
    assert {k.split(".")[0] for k in model.load_report.skipped} <= {
        "repa_mlp",
        "mae_head",
        "ar_predictor",
    }
    state = model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in state)
    clip = torch.from_numpy(harmonic_tone(1.0, 1))[None]
    logits = []
    if mc.acoustic_quantizer == "semantic_rvq":
        model.spd.head.register_forward_hook(lambda m, i, out: logits.append(out))
    with torch.inference_mode():
        ref = model.encode(clip, num_quantizers=4, merging_threshold=0.9)
    enc = ff.fast_encode(clip, model, num_quantizers=4, merging_threshold=0.9, backend="torch")
    for key in ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames"):
        assert torch.equal(enc[key], ref[key]), key
    frames = int(enc["token_lengths"].sum())
    assert frames == math.ceil(16000 / 1280) - 1  # SenseVoice's resampled length here
    _code_ranges(model, enc, frames)
    if mc.acoustic_quantizer == "semantic_rvq":
        # Stage 0 is assigned SPD's prediction (argmax of its logits), not searched.
        assert torch.equal(ref["acoustic_codes"][:, 0], logits[0].argmax(-1))
    audio = ff.fast_decode(
        model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
    )
    with torch.inference_mode():
        want = model.decode(ref["semantic_codes"], ref["acoustic_codes"], ref["token_lengths"])
    assert audio.shape[-1] == 1280 * frames - 16
    assert_elementwise(audio, want, "audio")


@pytest.mark.parametrize("name", ["tiny_semantic_rvq", "tiny_fixed_window"])
def test_resume_equals_uninterrupted_with_options(name, data_dir, tmp_path):
    # The fitted vocabulary, the window draws, the MAE masks and the training heads all
    # come back on resume.
    config = _config_file(tmp_path / "cfg.yaml", name, checkpoint_every=2, discriminator_start=0)
    args = ["--config", str(config), "--data", str(data_dir)]
    assert _train([*args, "--out", str(tmp_path / "a"), "--max-steps", "3"]) == 0
    assert _train([*args, "--out", str(tmp_path / "b"), "--max-steps", "2"]) == 0
    assert _train([*args, "--out", str(tmp_path / "b"), "--max-steps", "3", "--resume"]) == 0
    logs = []
    for run in ("a", "b"):
        with (tmp_path / run / "train_log.csv").open(newline="") as f:
            logs.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)])
    assert logs[0] == logs[1]
    wa = load_file(str(tmp_path / "a" / "step_00000003" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "step_00000003" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


OPTION_OVERRIDES = {
    "bsq": {"semantic_quantizer": "bsq", "bsq_bits": 9},
    "focal": {"compressor": "focal", "focal_blocks": 1},
    "semantic_rvq": {"acoustic_quantizer": "semantic_rvq", "spd": {"dim": 32, "num_layers": 1}},
    "fixed_window": {"aggregator": "fixed_window", "window": 4},
}


# Focal has no kernel of its own, and fixed windows run the aggregator's kernels (their
# Triton run is in test_fast_parity.py): the torch backend covers them here.
@pytest.mark.parametrize(
    "option, backend",
    [(o, "torch") for o in OPTION_OVERRIDES] + [("bsq", "triton"), ("semantic_rvq", "triton")],
)
def test_fast_path_equals_reference_per_option(option, backend):
    model = responsive(random_tiny_model(seed=4, **OPTION_OVERRIDES[option]))
    audio, lens = noise_batch(1, [9000, 5200, 14000], 0.1)
    with torch.inference_mode():
        ref = model.encode(audio, lens, num_quantizers=4, merging_threshold=0.95)
        want = model.decode(ref["semantic_codes"], ref["acoustic_codes"], ref["token_lengths"])
    enc = ff.fast_encode(
        audio, model, num_quantizers=4, merging_threshold=0.95, audio_lens=lens, backend=backend
    )
    for key in ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames"):
        assert torch.equal(enc[key], ref[key]), key
    got = ff.fast_decode(
        model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"], backend=backend
    )
    assert_elementwise(got, want, "audio", backend)
    # Batch invariance: the shortest item alone gives its batched codes.
    with torch.inference_mode():
        alone = model.encode(audio[1:2, :5200], num_quantizers=4, merging_threshold=0.95)
    groups = int(alone["total_frames"][0])
    assert torch.equal(alone["semantic_codes"][0], ref["semantic_codes"][1, :, :groups])
    assert torch.equal(alone["acoustic_codes"][0], ref["acoustic_codes"][1, :, :groups])


def test_bsq_codes_are_the_sign_bits_of_the_projection():
    model = random_tiny_model(seed=5, semantic_quantizer="bsq", bsq_bits=7)
    audio, lens = noise_batch(2, [12000, 7000], 0.1)
    captured = []
    model.semantic_vq.bsq.project_in.register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.inference_mode():
        enc = model.encode(audio, lens, num_quantizers=1)
    z = captured[0]  # [B, G, 7]
    expected = sum(int(2**j) * (z[..., j] >= 0).long() for j in range(7))
    valid = torch.arange(z.shape[1]).view(1, -1) < enc["total_frames"].view(-1, 1)
    assert torch.equal(enc["semantic_codes"][:, 0].long(), torch.where(valid, expected, 0))
    assert int(enc["semantic_codes"].max()) < 2**7


def test_fixed_window_tokens_and_decode_rules():
    model = random_tiny_model(seed=6, aggregator="fixed_window", window=3)
    audio, lens = noise_batch(3, [16000, 9000], 0.1)
    with torch.inference_mode():
        enc = model.encode(audio, lens, num_quantizers=2)
    frames = enc["token_lengths"].sum(1).tolist()
    for b, n in enumerate(frames):
        row = enc["token_lengths"][b].tolist()
        assert row[: math.ceil(n / 3)] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
        assert row[math.ceil(n / 3) :] == [0] * (len(row) - math.ceil(n / 3))
    # Lengths that are not a fixed window's are refused, not decoded as something else.
    bad = enc["token_lengths"].clone()
    bad[0, 0], bad[0, 1] = 2, 4
    with pytest.raises(InputError, match="fixed-window"), torch.inference_mode():
        model.decode(enc["semantic_codes"], enc["acoustic_codes"], bad)
    with pytest.raises(InputError, match="fixed-window"):
        ff.fast_decode(model, enc["semantic_codes"], enc["acoustic_codes"], bad)
    with pytest.raises(InputError, match="target_frame_rate"):
        ff.fast_encode(audio, model, num_quantizers=2, audio_lens=lens, target_frame_rate=6.0)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("semantic_quantizer", "lfq", "semantic_quantizer must be 'fsq' or 'bsq'"),
        ("bsq_bits", 40, r"bsq_bits must be an int in \[1, 31\]"),
        ("compressor", "conformer", "compressor must be 'convnext' or 'focal'"),
        ("focal_window", 4, "focal_window must be an odd int"),
        ("acoustic_quantizer", "fsq", "acoustic_quantizer must be 'rvq' or 'semantic_rvq'"),
        ("spd", {"depth": 2}, "spd must be a mapping with keys among"),
        ("aggregator", "windows", "aggregator must be 'similarity' or 'fixed_window'"),
        ("windows", [], "windows must be a non-empty list"),
        ("window", 0, r"window must be an int >= 1"),
    ],
)
def test_bad_option_values_are_clear_errors(key, value, message):
    with pytest.raises(CheckpointError, match=message):
        FlexiCodecConfig.from_dict({**TINY_CONFIG, key: value})


def test_defaults_leave_flexicodec_configs_unchanged(tmp_path):
    # An official-layout config without the keys loads with the defaults, and writes back
    # without them (so checkpoints' config.yaml and codes-file fingerprints do not change).
    cfg = FlexiCodecConfig.from_dict(dict(TINY_CONFIG))
    assert (cfg.semantic_quantizer, cfg.compressor) == ("fsq", "convnext")
    assert (cfg.acoustic_quantizer, cfg.aggregator) == ("rvq", "similarity")
    assert "bsq_bits" not in cfg.to_dict() and "windows" not in cfg.to_dict()
    assert "aggregator" not in cfg.to_dict() and "spd" not in cfg.to_dict()
    switched = FlexiCodecConfig.from_dict({**TINY_CONFIG, "aggregator": "fixed_window"})
    assert switched.to_dict()["aggregator"] == "fixed_window"
    assert FlexiCodecConfig.from_dict(switched.to_dict()) == switched


def test_base_chains_have_no_length_limit_and_nearer_files_win(tmp_path):
    """The built-in model's recipe is a chain of phases, one `base:` each, that grows with
    every continuation: any chain without a cycle loads, each file laid over its base."""
    (tmp_path / "step0.yaml").write_text("base: tiny\ntraining:\n  seed: 0\n  max_steps: 5\n")
    for k in range(1, 12):
        (tmp_path / f"step{k}.yaml").write_text(f"base: step{k - 1}.yaml\ntraining:\n  seed: {k}\n")
    config = load_train_config(tmp_path / "step11.yaml")
    assert (config.training.seed, config.training.max_steps) == (11, 5)
    assert config.model == load_train_config("tiny").model


def test_training_config_errors(tmp_path):
    source = load_train_config("tiny_fixed_window").source
    source["model"]["n_codebooks"] = 2
    path = tmp_path / "ar.yaml"
    path.write_text(yaml.safe_dump(source))
    with pytest.raises(CheckpointError, match="loss_weights.ar"):
        load_train_config(path)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(CheckpointError, match="form a cycle: .*loop.yaml -> .*loop.yaml"):
        load_train_config(tmp_path / "loop.yaml")
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(CheckpointError, match="a.yaml -> .*b.yaml -> .*a.yaml"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "vocab.yaml").write_text(
        yaml.safe_dump(
            {"base": "tiny_semantic_rvq", "training": {"semantic_vocab": {"fit_batches": 0}}}
        )
    )
    with pytest.raises(CheckpointError, match="semantic_vocab.fit_batches"):
        load_train_config(tmp_path / "vocab.yaml")
