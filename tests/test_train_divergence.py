"""Phase-2 divergence (docs/phase2_divergence.md): the trainer's diagnostics (per-module
gradient norms, latent and codebook scales, per-term gradient probes in train_log.csv)
checked against their definitions, and the isolated REPA term that removes the cause."""

import csv
import dataclasses
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from signals import harmonic_tone

from flexicodec_fast.reference.training import training_step_outputs
from flexicodec_fast.train.config import load_train_config, parse_train_config
from flexicodec_fast.train.data import SkippedFileWarning
from flexicodec_fast.train.trainer import (
    GRAD_GROUPS,
    LOG_COLUMNS,
    PROBED_TERMS,
    REDUCED_COLUMNS,
    SCALE_COLUMNS,
    Trainer,
    build_initial_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    for i in range(3):
        sf.write(folder / f"clip{i}.wav", harmonic_tone(1.0 + 0.15 * i, i, 16000), 16000)
    return folder


def _tiny(**training):
    source = load_train_config("tiny").source
    source["training"].update(training)
    return parse_train_config(source)


def _trainer(cfg, data, out, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFileWarning)
        return Trainer(cfg, [data], out, steps, False, "cpu", False)


def _rows(run):
    with (run / "train_log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_log_columns_hold_every_diagnostic_once():
    assert len(set(LOG_COLUMNS)) == len(LOG_COLUMNS)
    diagnostics = [f"grad_{g}" for g in GRAD_GROUPS] + list(SCALE_COLUMNS)
    # Averaged over processes like the losses; the probes (empty on most steps) are not.
    assert set(diagnostics) <= set(REDUCED_COLUMNS)
    assert {"loss_g", "mel", "commitment", "grad_norm_g", "grad_norm_d"} <= set(REDUCED_COLUMNS)
    probes = {f"{kind}_{t}" for kind in ("probe", "radial") for t in PROBED_TERMS}
    assert probes <= set(LOG_COLUMNS) and not probes & set(REDUCED_COLUMNS)
    assert LOG_COLUMNS[-1] == "seconds"


def test_gradient_groups_partition_the_generator_by_module_name(data_dir, tmp_path):
    trainer = _trainer(_tiny(), data_dir, tmp_path / "run", 1)
    grouped = [id(p) for params in trainer.grad_groups.values() for p in params]
    assert sorted(grouped) == sorted(id(p) for p in trainer.gen_params)
    by_id = {id(p): name for name, p in trainer.codec.named_parameters()}
    expected_prefix = {
        "encoder": ("dac.encoder.",),
        "quantizer": ("dac.quantizer.",),
        "decoder": ("dac.decoder.",),
        "semantic": ("convnext_encoder.", "convnext_decoder.", "semantic_vq."),
        "aggregators": ("semantic_aggregator.", "acoustic_aggregator."),
        "bottleneck": ("bottleneck_transformer.",),
        "repa": ("repa_mlp.",),
    }
    for group, prefixes in expected_prefix.items():
        names = [by_id[id(p)] for p in trainer.grad_groups[group]]
        assert names and all(n.startswith(prefixes) for n in names), group
    assert trainer.grad_groups["other"] == []


def test_logged_diagnostics_match_their_definitions(data_dir, tmp_path):
    cfg = _tiny(bypass_quantize_rate=0.0, dither=0.0, fixed_threshold=0.9, probe_every=2)
    trainer = _trainer(cfg, data_dir, tmp_path / "run", 2)
    batch = torch.stack([trainer.dataset[(i, 12800, 3)] for i in range(2)])
    encoder_out = trainer.codec.dac.encode_audio(batch.unsqueeze(1)).detach()

    values = trainer.train_step(batch)
    # Group norms are pre-clipping: their root sum of squares is the total norm that
    # clip_grad_norm_ reports (fp32 sums in another order: a few ulps apart).
    groups = [values[f"grad_{g}"] for g in GRAD_GROUPS]
    assert math.sqrt(sum(g * g for g in groups)) == pytest.approx(values["grad_norm_g"], rel=1e-5)
    assert values["grad_other"] == 0.0
    assert min(values[f"grad_{g}"] for g in GRAD_GROUPS[:-1]) > 0.0
    # The step's encoder output is the encoder's output on the batch before the update,
    # trimmed to the 12.5 Hz frames the SenseVoice branch has: 9 of the 10 for 12800
    # samples (test_training derives the 9).
    assert values["encoder_rms"] == float(encoder_out[..., :9].pow(2).mean().sqrt())
    state = trainer.codec.state_dict()
    books = torch.cat(
        [state[f"dac.quantizer.quantizers.{k}.codebook.weight"].reshape(-1) for k in range(4)]
    )
    assert values["codebook_rms"] == float(books.pow(2).mean().sqrt())
    assert values["rvq_latent_rms"] > 0.0 and values["rvq_input_rms"] > 0.0
    assert all(values[f"probe_{t}"] == "" for t in PROBED_TERMS)  # logged step 1

    trainer.step = 1
    values = trainer.train_step(batch)
    # Terms that cannot reach the encoder output have a zero gradient there by definition:
    # the codebook loss moves only codebook rows, the distillation only the semantic branch.
    assert values["probe_codebook"] == 0.0 and values["probe_distill"] == 0.0
    for term in ("mel", "commitment", "repa", "adversarial", "feature_matching"):
        assert values[f"probe_{term}"] > 0.0, term


def test_probes_do_not_change_the_run(data_dir, tmp_path):
    runs = {}
    for every in (0, 1):
        cfg = _tiny(probe_every=every, checkpoint_every=3)
        trainer = _trainer(cfg, data_dir, tmp_path / f"p{every}", 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedFileWarning)
            trainer.run()
        runs[every] = (trainer.codec.state_dict(), _rows(tmp_path / f"p{every}"))
    (w0, rows0), (w1, rows1) = runs[0], runs[1]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    skip = {"seconds", *(f"{kind}_{t}" for kind in ("probe", "radial") for t in PROBED_TERMS)}
    assert [{k: v for k, v in r.items() if k not in skip} for r in rows0] == [
        {k: v for k, v in r.items() if k not in skip} for r in rows1
    ]
    assert list(rows1[0]) == list(LOG_COLUMNS)
    assert all(r["probe_mel"] == r["radial_mel"] == "" for r in rows0)
    assert all(float(r["probe_mel"]) > 0 for r in rows1)
    # The part along the latent is at most the whole gradient (Cauchy-Schwarz).
    assert all(abs(float(r["radial_mel"])) <= float(r["probe_mel"]) for r in rows1)
    assert all(np.isfinite(float(r["rvq_latent_rms"])) or r["bypassed"] == "1" for r in rows1)


def _repa_gradients(model, audio, forward):
    """REPA's value and its gradient with respect to every parameter and the encoder output
    (None where it does not reach) on one seeded forward."""
    random.seed(3)
    torch.manual_seed(3)
    out = training_step_outputs(model, audio, forward)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(
        out.losses["repa"], [out.acoustic_latent, *params], allow_unused=True
    )
    return out.losses["repa"].detach(), grads[0], dict(zip(names, grads[1:], strict=True))


def test_isolated_repa_keeps_its_value_and_stays_out_of_the_acoustic_path():
    """The cause of the divergence: REPA's target holds the encoder output, whose scale the
    quantiser erases (codes by cosine, raw codebook rows out), and the official term sends
    its gradient back through the straight-through estimator into the encoder, the acoustic
    aggregator and the RVQ. Isolated, the same value trains only the bottleneck, the head
    and the semantic branch: the head and bottleneck gradients are the official ones."""
    cfg = _tiny(dither=0.0, fixed_threshold=0.9, bypass_quantize_rate=0.0)
    model = build_initial_model(cfg).train()
    audio = torch.from_numpy(np.stack([harmonic_tone(0.8, 1), harmonic_tone(0.8, 2)]))
    official = cfg.forward_config()
    isolated = dataclasses.replace(official, repa_isolated=True)
    value, at_latent, grads = _repa_gradients(model, audio, official)
    iso_value, iso_at_latent, iso_grads = _repa_gradients(model, audio, isolated)

    assert torch.equal(value, iso_value)
    assert at_latent is not None and float(at_latent.norm()) > 0
    for prefix in ("dac.encoder.", "dac.quantizer.quantizers.0.in_proj.", "acoustic_aggregator."):
        reached = [g for n, g in grads.items() if n.startswith(prefix) and g is not None]
        assert sum(float(g.norm()) for g in reached) > 0, prefix
    assert iso_at_latent is None
    acoustic = ("dac.encoder.", "dac.quantizer.", "acoustic_aggregator.")
    for name, grad in iso_grads.items():
        if name.startswith(acoustic):
            assert grad is None, name
        elif name.startswith(("bottleneck_transformer.", "repa_mlp.")):
            # The same function of the same values: a second, identical bottleneck pass.
            assert torch.equal(grad, grads[name]), name


def test_isolated_repa_on_bypassed_batches_is_the_official_term():
    cfg = _tiny(dither=0.0, fixed_threshold=0.9, bypass_quantize_rate=1.0)
    model = build_initial_model(cfg).train()
    audio = torch.from_numpy(np.stack([harmonic_tone(0.8, 4)]))
    official = cfg.forward_config()
    value, _, grads = _repa_gradients(model, audio, official)
    iso_value, _, iso_grads = _repa_gradients(
        model, audio, dataclasses.replace(official, repa_isolated=True)
    )
    assert torch.equal(value, iso_value)
    assert all(
        (g is None and iso_grads[n] is None) or torch.equal(g, iso_grads[n])
        for n, g in grads.items()
    )


def test_phase2k_fine_tunes_the_bundle_with_the_gan_terms_and_isolated_repa():
    """The GPU recipe of docs/phase2_divergence.md: the bundle's architecture and weights,
    the adversarial terms on from the first step, the REPA term isolated; its CPU variant
    changes only the batch, the data workers, the warm-up and the logging intervals."""
    repo = Path(__file__).resolve().parents[1]
    cfg = load_train_config(repo / "scripts" / "builtin" / "phase2k.yaml")
    t = cfg.training
    assert t.phase == 2 and t.discriminator_start == 0 and t.repa_isolated
    assert t.init_from is not None and not t.init_from.strict
    assert (repo / t.init_from.checkpoint).is_file()
    bundled = yaml.safe_load((repo / t.init_from.checkpoint).with_name("config.yaml").read_text())
    model = {k: v for k, v in vars(cfg.model).items() if k != "use_similarity_alignment"}
    assert all(bundled["model"].get(k, v) == v for k, v in model.items())
    assert bundled["model"]["use_similarity_alignment"] is True
    cpu = load_train_config(repo / "scripts" / "builtin" / "phase2k_cpu.yaml")
    changed = {"checkpoint_every", "probe_every", "data", "optimizer"}
    same = {k: v for k, v in vars(t).items() if k not in changed}
    assert {k: v for k, v in vars(cpu.training).items() if k not in changed} == same
    assert cpu.model == cfg.model and cpu.training.data.batch_size == 4
    assert dataclasses.replace(cpu.training.optimizer, warmup_steps=200) == t.optimizer
