"""Training (issue #6): the training forward, a few steps of the tiny config lowering the
loss, exact resume, checkpoints loadable by prepare_model, bad data skipped, the frozen
SenseVoice, and a 2-process torchrun run with gloo."""

import csv
import json
import math
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file
from signals import harmonic_tone

import flexicodec_fast as ff
from flexicodec_fast.reference.errors import CheckpointError, InputError
from flexicodec_fast.reference.training import (
    TrainingForwardConfig,
    one_group_per_frame,
    training_step_outputs,
)
from flexicodec_fast.train import data as data_module
from flexicodec_fast.train import trainer as trainer_module
from flexicodec_fast.train.cli import main as train_main
from flexicodec_fast.train.config import load_train_config, parse_train_config
from flexicodec_fast.train.data import (
    BucketBatches,
    CropDataset,
    SkippedFileWarning,
    find_audio_files,
    scan_files,
)
from flexicodec_fast.train.trainer import Trainer, WarmupCosine, build_initial_model

REPO = Path(__file__).resolve().parents[1]
GOOD_CLIPS = 5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Five usable clips (one at 22.05 kHz, in a sub-folder) and three bad files."""
    folder = tmp_path_factory.mktemp("wavs")
    (folder / "more").mkdir()
    for i in range(GOOD_CLIPS):
        sr = 22050 if i == 4 else 16000
        where = folder / "more" if i == 4 else folder
        sf.write(where / f"clip{i}.wav", harmonic_tone(1.0 + 0.15 * i, i, sr), sr)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file" * 10)
    sf.write(folder / "silent.wav", np.zeros(20000, np.float32), 16000)
    sf.write(folder / "short.wav", harmonic_tone(0.1, 9, 16000), 16000)
    return folder


def _tiny(**training):
    cfg = load_train_config("tiny")
    source = cfg.source
    source["training"].update(training)
    return parse_train_config(source)


def _write_config(path: Path, **training) -> Path:
    source = load_train_config("tiny").source
    source["training"].update(training)
    path.write_text(yaml.safe_dump(source))
    return path


def _log_rows(run: Path) -> list[dict]:
    with (run / "train_log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _quiet_trainer(cfg, data, out, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        return Trainer(cfg, [data], out, steps, False, "cpu", False)


# ----------------------------------------------------------------------------- forward


def test_training_forward_shapes_losses_and_gradients():
    cfg = _tiny()
    model = build_initial_model(cfg).train()
    audio = torch.from_numpy(np.stack([harmonic_tone(0.8, 1, 16000), harmonic_tone(0.8, 2, 16000)]))
    random.seed(5)
    expected_threshold = random.uniform(0.8, 1.0)
    random.seed(5)
    out = training_step_outputs(model, audio, TrainingForwardConfig(bypass_quantize_rate=0.0))
    assert out.threshold == expected_threshold and not out.bypassed
    frames = out.frames
    assert frames == 9  # min(int(Tl / 1.33333), ceil(12800 / 1280)) for Tl = 13
    length = min(1280 * frames - 16, audio.shape[1])
    assert out.audio.shape == out.target.shape == (2, 1, length)
    torch.testing.assert_close(out.target[:, 0], audio[:, :length])
    assert set(out.losses) == {"mel", "commitment", "codebook", "distill", "repa"} | {
        "entropy",
        "spd",
        "mae",
        "ar",
    }
    assert all(float(out.losses[k]) == 0.0 for k in ("entropy", "spd", "mae", "ar"))
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    assert 1 <= int(out.num_groups.min()) and int(out.num_groups.max()) <= frames

    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in model.semantic_model.parameters())
    for module in (model.dac.encoder, model.dac.decoder, model.dac.quantizer, model.repa_mlp):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.semantic_aggregator.query_embedding.grad is not None

    model.zero_grad()
    out = training_step_outputs(
        model, audio, TrainingForwardConfig(bypass_quantize_rate=1.0, fixed_threshold=0.9)
    )
    assert out.bypassed and out.threshold == 0.9
    assert float(out.losses["commitment"]) == float(out.losses["codebook"]) == 0.0
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in model.dac.quantizer.parameters())


def test_phase_one_trains_at_the_fixed_frame_rate():
    cfg = _tiny(phase=1)
    assert cfg.model.use_similarity_alignment is False
    model = build_initial_model(cfg).train()
    audio = torch.from_numpy(np.stack([harmonic_tone(0.8, 3, 16000)]))
    out = training_step_outputs(model, audio, TrainingForwardConfig(bypass_quantize_rate=0.0))
    assert out.threshold is None
    assert int(out.num_groups[0]) == out.frames
    assert float(out.losses["repa"]) == 0.0  # no bottleneck transformer in phase 1
    seg = one_group_per_frame(2, 4, "cpu")
    assert seg.token_lengths.tolist() == [[1] * 4] * 2 and seg.group_ids[1].tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- training


def test_a_few_steps_lower_the_generator_loss(data_dir, tmp_path):
    cfg = _tiny(fixed_threshold=0.9, bypass_quantize_rate=0.0, dither=0.0)
    trainer = _quiet_trainer(cfg, data_dir, tmp_path / "run", 12)
    batch = torch.stack([trainer.dataset[(i, 12800, 7)] for i in range(2)])
    forward = cfg.forward_config()
    w = cfg.training.loss_weights

    def loss_on_batch():
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(123)
            losses = training_step_outputs(trainer.codec, batch, forward).losses
        total = sum(
            getattr(w, k) * float(v) for k, v in losses.items()
        )  # every generator term but the adversarial ones, whose discriminator also moves
        return total, float(losses["mel"])

    before, mel_before = loss_on_batch()
    frozen = {k: v.clone() for k, v in trainer.codec.semantic_model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        result = trainer.run()
    after, mel_after = loss_on_batch()
    assert result.step == 12
    assert after < 0.85 * before, (before, after)
    assert mel_after < 0.85 * mel_before, (mel_before, mel_after)
    for key, value in trainer.codec.semantic_model.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert not any(p.requires_grad for p in trainer.codec.semantic_model.parameters())
    optimised = {id(p) for group in trainer.opt_g.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in trainer.codec.semantic_model.parameters()}


def test_discriminator_warm_up_leaves_the_discriminator_untouched(data_dir, tmp_path):
    cfg = _tiny(discriminator_start=2, checkpoint_every=2, bypass_quantize_rate=0.0, dither=0.0)
    trainer = _quiet_trainer(cfg, data_dir, tmp_path / "run", 2)
    initial = {k: v.clone() for k, v in trainer.disc.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        trainer.run()
    for key, value in trainer.disc.state_dict().items():
        assert torch.equal(value, initial[key]), key
    rows = _log_rows(tmp_path / "run")
    assert [float(r["adversarial"]) for r in rows] == [0.0, 0.0]
    assert [float(r["loss_d"]) for r in rows] == [0.0, 0.0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        later = Trainer(cfg, [data_dir], tmp_path / "run", 3, True, "cpu", False)
        later.run()
    row = _log_rows(tmp_path / "run")[-1]
    assert float(row["adversarial"]) > 0 and float(row["loss_d"]) > 0
    assert any(not torch.equal(v, initial[k]) for k, v in later.disc.state_dict().items())


def test_generator_waits_for_adversarial_start_while_the_discriminator_trains(data_dir, tmp_path):
    """Before adversarial_start the generator learns exactly what a GAN-free step teaches it
    (same weights as a run whose discriminator waits), while the discriminator already
    trains; from adversarial_start on both adversarial terms reach the generator."""
    common = dict(checkpoint_every=2, bypass_quantize_rate=0.0, dither=0.0)
    waiting = _quiet_trainer(
        _tiny(discriminator_start=0, adversarial_start=2, **common), data_dir, tmp_path / "w", 2
    )
    initial = {k: v.clone() for k, v in waiting.disc.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        waiting.run()
    # Built after the first run: a trainer seeds the global generators when it is built.
    gan_free = _quiet_trainer(_tiny(discriminator_start=2, **common), data_dir, tmp_path / "g", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        gan_free.run()
    g_state = gan_free.codec.state_dict()
    for key, value in waiting.codec.state_dict().items():
        assert torch.equal(value, g_state[key]), key
    assert any(not torch.equal(v, initial[k]) for k, v in waiting.disc.state_dict().items())
    rows = _log_rows(tmp_path / "w")
    assert [float(r["adversarial"]) for r in rows] == [0.0, 0.0]
    assert [float(r["feature_matching"]) for r in rows] == [0.0, 0.0]
    assert all(float(r["loss_d"]) > 0 for r in rows)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        cfg = _tiny(discriminator_start=0, adversarial_start=2, **common)
        Trainer(cfg, [data_dir], tmp_path / "w", 3, True, "cpu", False).run()
    row = _log_rows(tmp_path / "w")[-1]
    assert float(row["adversarial"]) > 0 and float(row["feature_matching"]) > 0


def test_adversarial_start_before_the_discriminator_is_refused():
    with pytest.raises(
        CheckpointError, match=r"training\.adversarial_start: .*>= discriminator_start \(5\).*got 3"
    ):
        _tiny(discriminator_start=5, adversarial_start=3)


def test_resume_equals_uninterrupted_and_checkpoints_load(data_dir, tmp_path):
    config = _write_config(tmp_path / "cfg.yaml", checkpoint_every=2)
    args = ["--config", str(config), "--data", str(data_dir), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        assert train_main([*args, "--out", str(tmp_path / "a"), "--max-steps", "4"]) == 0
        assert train_main([*args, "--out", str(tmp_path / "b"), "--max-steps", "2"]) == 0
        # A run folder with checkpoints is never silently overwritten.
        assert train_main([*args, "--out", str(tmp_path / "b"), "--max-steps", "4"]) == 2
        assert (
            train_main([*args, "--out", str(tmp_path / "b"), "--max-steps", "4", "--resume"]) == 0
        )

    rows_a, rows_b = _log_rows(tmp_path / "a"), _log_rows(tmp_path / "b")
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4"]
    for a, b in zip(rows_a, rows_b, strict=True):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    assert {r["epoch"] for r in rows_a} == {"0", "1"}  # 5 clips, batches of 2: 3 per epoch
    for name in ("model.safetensors", "discriminator.safetensors"):
        wa = load_file(str(tmp_path / "a" / "step_00000004" / name))
        wb = load_file(str(tmp_path / "b" / "step_00000004" / name))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name

    # Round trip: the checkpoint is an official-layout model for prepare_model.
    step = tmp_path / "a" / "step_00000004"
    saved = load_file(str(step / "model.safetensors"))
    assert any(k.startswith("semantic_model.") for k in saved)
    assert any(k.startswith("repa_mlp.") for k in saved)
    model = ff.prepare_model(step / "model.safetensors", step / "config.yaml", device="cpu")
    assert all(k.startswith("repa_mlp.") for k in model.load_report.skipped)
    state = model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in state)
    clip = torch.from_numpy(harmonic_tone(1.0, 0, 16000))[None]
    enc = ff.fast_encode(clip, model, num_quantizers=3, merging_threshold=0.9)
    assert enc["semantic_codes"].shape[:2] == (1, 1) and enc["acoustic_codes"].shape[1] == 2
    audio = ff.fast_decode(
        model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
    )
    assert audio.shape[-1] == 1280 * int(enc["token_lengths"].sum()) - 16

    # The frozen SenseVoice in the checkpoint is the one the run started from.
    initial = build_initial_model(load_train_config(config)).semantic_model.state_dict()
    for key, value in initial.items():
        assert torch.equal(saved["semantic_model." + key], value), key
    state = torch.load(step / "trainer_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["position"]) == (4, 1, 1)
    torch.load(step / "rng_rank0.pt", weights_only=True)

    # Fine-tuning: strict init goes through prepare_model (REPA head included); non-strict
    # init loads what fits a different architecture and keeps the rest initialised.
    source = load_train_config("tiny").source
    del source["model"]
    source["training"]["init_from"] = {
        "checkpoint": str(step / "model.safetensors"),
        "config": str(step / "config.yaml"),
    }
    tuned = build_initial_model(parse_train_config(source)).state_dict()
    assert tuned.keys() == saved.keys()
    assert all(torch.equal(tuned[k], saved[k]) for k in saved)
    source = load_train_config("tiny").source
    source["model"]["n_codebooks"] = 5
    source["training"]["init_from"] = {
        "checkpoint": str(step / "model.safetensors"),
        "strict": False,
    }
    grown = build_initial_model(parse_train_config(source)).state_dict()
    assert all(torch.equal(grown[k], saved[k]) for k in saved)
    assert "dac.quantizer.quantizers.4.codebook.weight" in grown


def test_torchrun_two_processes_keep_replicas_identical(data_dir, tmp_path):
    config = _write_config(tmp_path / "cfg.yaml", checkpoint_every=2)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "flexicodec_fast.train.cli",
        "--config",
        str(config),
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--quiet",
    ]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    replicas = json.loads((out / "step_00000002" / "replicas.json").read_text())
    assert len(replicas["digests"]) == 2 and len(set(replicas["digests"])) == 1
    assert [r["step"] for r in _log_rows(out)] == ["1", "2"]
    state = torch.load(out / "step_00000002" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2
    assert (out / "step_00000002" / "rng_rank1.pt").is_file()


# ----------------------------------------------------------------------------- data


def test_many_skipped_files_are_named_up_to_a_limit_then_counted(tmp_path):
    for i in range(data_module.SKIPS_NAMED + 3):
        sf.write(tmp_path / f"short{i:02d}.wav", harmonic_tone(0.1, i, 16000), 16000)
    (tmp_path / "zbroken.wav").write_bytes(b"RIFF not really a wave file" * 10)
    sf.write(tmp_path / "zgood.wav", harmonic_tone(1.0, 0, 16000), 16000)
    with pytest.warns(SkippedFileWarning) as caught:
        files = scan_files(find_audio_files([tmp_path]), min_samples=6400)
    assert [Path(f.path).name for f in files] == ["zgood.wav"]
    messages = [str(w.message) for w in caught]
    named = [f"short{i:02d}.wav: too short" for i in range(data_module.SKIPS_NAMED)]
    assert len(messages) == data_module.SKIPS_NAMED + 1
    assert all(name in m for name, m in zip(named, messages, strict=False))
    assert messages[-1] == (
        "skipping 4 more files (of 14 skipped in all: 13 shorter than 6400 samples at 16 kHz, "
        "1 unreadable)"
    )


def test_bad_files_are_skipped_with_warnings(data_dir):
    paths = find_audio_files([data_dir])
    assert len(paths) == GOOD_CLIPS + 3
    with pytest.warns(SkippedFileWarning) as caught:
        files = scan_files(paths, min_samples=6400)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.wav: unreadable" in messages and "short.wav: too short" in messages
    assert len(files) == GOOD_CLIPS + 1  # the silent file is only found when loaded
    silent = next(i for i, f in enumerate(files) if f.path.endswith("silent.wav"))
    resampled = next(f for f in files if f.path.endswith("clip4.wav"))
    assert resampled.num_samples == math.ceil(1.6 * 22050 * 16000 / 22050)

    dataset = CropDataset(files)
    with pytest.warns(SkippedFileWarning, match="silent"):
        crop = dataset[(silent, 6400, 0)]
    assert crop.shape == (6400,) and float(crop.abs().max()) > 0.01
    batches = BucketBatches([f.num_samples for f in files], 2, 12800, 1280, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFileWarning)  # already known: no new warning
        for batch in batches.epoch(0):
            for item in batch:
                assert float(dataset[item].abs().max()) > 0.01


def test_list_files_and_missing_sources(data_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# training clips\n{data_dir / 'clip0.wav'}\nclip1.wav\n")
    (tmp_path / "clip1.wav").write_bytes((data_dir / "clip1.wav").read_bytes())
    assert find_audio_files(listing) == [data_dir / "clip0.wav", tmp_path / "clip1.wav"]
    with pytest.raises(InputError, match="no such file"):
        find_audio_files(tmp_path / "nothing")


def test_batches_are_bucketed_deterministic_and_split_across_processes():
    lengths = [20000, 9000, 30000, 7000, 25000, 12000, 40000]
    single = BucketBatches(lengths, 2, 12800, 1280, seed=3)
    assert single.epoch(0) == BucketBatches(lengths, 2, 12800, 1280, seed=3).epoch(0)
    assert single.epoch(0) != single.epoch(1)
    seen = []
    for batch in single.epoch(0):
        crop = batch[0][1]
        shortest = min(lengths[i] for i, _, _ in batch)
        assert all(length == crop for _, length, _ in batch)
        assert crop % 1280 == 0 and min(12800, shortest) - 1280 < crop <= min(12800, shortest)
        seen += [i for i, _, _ in batch]
    assert sorted(seen) == list(range(len(lengths)))
    ranks = [BucketBatches(lengths, 2, 12800, 1280, 3, rank, 3).epoch(0) for rank in range(3)]
    assert len({len(r) for r in ranks}) == 1
    assert {i for r in ranks for b in r for i, _, _ in b} == set(range(len(lengths)))


# ----------------------------------------------------------------------------- config


def test_builtin_recipe_configs_parse_and_continue_each_other():
    """The committed recipe of the built-in model (docs/builtin_model.md) stays loadable, and
    its phases share one architecture (each initialises from the previous one's weights).
    Quantizer dropout is a training choice, not architecture: the phases from 2f on lower it."""
    names = ("phase1", "phase2") + tuple(f"phase2{x}" for x in "bcdefghij")
    phases = [load_train_config(REPO / "scripts" / "builtin" / f"{n}.yaml") for n in names]
    assert [p.training.phase for p in phases] == [1] + [2] * 10
    assert all(p.training.discriminator_start > p.training.max_steps for p in phases[2:])
    bundled = yaml.safe_load(
        (REPO / "flexicodec_fast" / "assets" / "builtin" / "config.yaml").read_text()
    )["model"]
    for p in phases:
        model = {
            k: v
            for k, v in vars(p.model).items()
            if k not in ("use_similarity_alignment", "quantizer_dropout")
        }
        assert all(bundled.get(k, v) == v for k, v in model.items()), p.source["model"]


def test_shipped_configs_and_config_errors(tmp_path):
    released = load_train_config("released")
    t = released.training
    assert released.model.latent_dim == 512 and released.model.transformer_num_layers == 32
    assert (t.optimizer.lr, t.optimizer.betas, t.optimizer.weight_decay) == (
        1e-4,
        (0.9, 0.99),
        0.01,
    )
    assert (t.optimizer.warmup_steps, t.optimizer.decay_steps, t.optimizer.min_lr) == (
        5000,
        1_000_000,
        5e-5,
    )
    assert (t.data.crop_samples, t.data.batch_size, t.optimizer.grad_clip) == (96000, 8, 1.0)
    w = t.loss_weights
    assert (w.commitment, w.codebook, w.adversarial, w.feature_matching, w.mel, w.distill) == (
        0.25,
        1.0,
        1.0,
        2.0,
        15.0,
        1.0,
    )
    assert t.discriminator.periods == (2, 3, 5, 7, 11)
    assert t.discriminator.fft_sizes == (2048, 1024, 512)

    source = load_train_config("tiny").source
    source["training"]["optimizer"]["learning_rate"] = 1.0
    with pytest.raises(CheckpointError, match=r"training.optimizer: unknown key\(s\) \['learning"):
        parse_train_config(source)
    source = load_train_config("tiny").source
    source["model"]["latent_dim"] = 64
    with pytest.raises(CheckpointError, match="latent_dim"):
        parse_train_config(source)
    source = load_train_config("tiny").source
    source["training"]["data"]["min_samples"] = 1000
    with pytest.raises(CheckpointError, match="data.min_samples"):
        parse_train_config(source)
    with pytest.raises(CheckpointError, match="shipped configs"):
        load_train_config("no-such-config")
    assert train_main(["--config", "nope", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2


def test_learning_rate_schedule():
    schedule = WarmupCosine(1e-4, 5e-5, warmup=5000, decay=1_000_000)
    assert schedule(0) == pytest.approx(1 / 5000)
    assert schedule(4999) == pytest.approx(1.0)
    assert schedule(5000) == pytest.approx(1.0)
    assert schedule(1_000_000) * 1e-4 == pytest.approx(5e-5)
    assert schedule(2_000_000) * 1e-4 == pytest.approx(5e-5)
    midpoint = 5000 + (1_000_000 - 5000) // 2
    assert schedule(midpoint) * 1e-4 == pytest.approx(7.5e-5)  # progress exactly 1/2


def test_a_bare_cuda_device_gets_an_index(monkeypatch):
    """`--device cuda` trains on the current CUDA device (LOCAL_RANK's under torchrun):
    `torch.cuda.set_device` itself refuses a device without an index. CUDA is simulated."""
    chosen = []

    def set_device(device):
        if device.index is None:
            raise ValueError("Expected a torch.device with a specified index")
        chosen.append(device)

    monkeypatch.setattr(trainer_module, "resolve_device", lambda d: torch.device(d))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert trainer_module._device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert trainer_module._device("cuda") == torch.device("cuda", 1)
    assert trainer_module._device("cuda:0") == torch.device("cuda", 0)
    assert trainer_module._device("cpu") == torch.device("cpu")
    assert chosen == [torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 0)]
