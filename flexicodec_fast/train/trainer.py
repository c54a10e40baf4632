"""The training loop: discriminator step then generator step, checkpoints, exact resume, DDP.

Run folder layout:

    RUN_DIR/train_config.yaml       the training YAML as used
    RUN_DIR/train_log.csv           one row per step: every loss, lr, grad norms (total and
                                    per module), latent and codebook scales, gradient probes
    RUN_DIR/step_XXXXXXXX/          a checkpoint
        model.safetensors           FlexiCodec weights, official key layout (+ repa_mlp.*)
        config.yaml                 official-layout model config: `prepare_model(model.safetensors,
                                    config.yaml)` loads the checkpoint for inference
        discriminator.safetensors
        trainer_state.pt            step, data position, optimizer and scheduler states
        rng_rank{r}.pt              torch / Python / NumPy generator states of process r
        replicas.json               (multi-process) a digest of every process's weights

Every `.pt` file holds only tensors and plain containers and is read with
`torch.load(weights_only=True)`. Resuming restores all of the above, so on CPU the losses of
a resumed run equal those of an uninterrupted one bit for bit.

Multi-process data parallel: start with `torchrun --nproc_per_node N`; gloo on CPU, NCCL on
GPU. Every process sees its own batches (the same count per epoch); process 0 writes the run
folder. The frozen SenseVoice is not in any optimizer and never changes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from ..loading import prepare_model, resolve_device, sensevoice_files
from ..reference.checkpoint import (
    SENSEVOICE_PREFIX,
    TRAINING_HEADS,
    build_from_state_dicts,
    read_state_dict,
)
from ..reference.config import FlexiCodecConfig
from ..reference.discriminators import Discriminator
from ..reference.errors import CheckpointError, InputError
from ..reference.losses import adversarial_loss, discriminator_loss, feature_matching_loss
from ..reference.model import FlexiCodec
from ..reference.semantic_rvq import fit_kmeans, spd_loss_weight
from ..reference.sensevoice import SENSEVOICE_UNUSED_PREFIXES
from ..reference.training import TrainingForward, attach_repa_head, attach_training_heads
from ..reference.weight_norm import normalise_weight_norm_keys
from .config import TrainConfig, check_trainable
from .data import BucketBatches, CropDataset, collate, find_audio_files, scan_files

log = logging.getLogger("flexicodec_fast.train")

# Generator parameters by module (the first name component; `dac.*` split into its encoder,
# quantizer and decoder), for the per-group gradient norms `grad_<group>` of the log: a run
# that diverges shows which part's gradients grew first. Modules not named here (training
# heads of the related-codec options) count as `other`.
GRAD_GROUPS = (
    "encoder",
    "quantizer",
    "decoder",
    "semantic",
    "aggregators",
    "bottleneck",
    "repa",
    "other",
)
_GROUP_OF_MODULE = {
    "dac.encoder": "encoder",
    "dac.quantizer": "quantizer",
    "dac.decoder": "decoder",
    "convnext_encoder": "semantic",
    "convnext_decoder": "semantic",
    "compressor": "semantic",
    "decompressor": "semantic",
    "semantic_vq": "semantic",
    "semantic_aggregator": "aggregators",
    "acoustic_aggregator": "aggregators",
    "window_decoder": "aggregators",
    "bottleneck_transformer": "bottleneck",
    "repa_mlp": "repa",
}
# Scales of the latents (`TrainingOutputs.scales`) and of the RVQ codebooks (`codebook_rms`:
# RMS of every stage's raw codebook entries; the commitment and codebook losses compare these
# rows with the projected latents, whose RMS is `rvq_latent_rms`).
SCALE_COLUMNS = ("encoder_rms", "rvq_input_rms", "rvq_latent_rms", "codebook_rms")
# Weighted loss terms whose gradient g with respect to the DAC encoder output `ac` is probed
# every `training.probe_every` steps: `probe_<term>` = |g|, `radial_<term>` = <g, ac> / |ac|,
# the part of g along `ac` (negative: a gradient step on this term alone makes `ac` larger).
PROBED_TERMS = (
    "mel",
    "commitment",
    "codebook",
    "distill",
    "repa",
    "adversarial",
    "feature_matching",
)

LOG_COLUMNS = (
    "step",
    "epoch",
    "lr",
    "threshold",
    "bypassed",
    "tokens_per_frame",
    "loss_g",
    "mel",
    "commitment",
    "codebook",
    "distill",
    "repa",
    "entropy",
    "spd",
    "mae",
    "ar",
    "adversarial",
    "feature_matching",
    "loss_d",
    "grad_norm_g",
    "grad_norm_d",
    *(f"grad_{group}" for group in GRAD_GROUPS),
    *SCALE_COLUMNS,
    *(f"probe_{term}" for term in PROBED_TERMS),
    *(f"radial_{term}" for term in PROBED_TERMS),
    "seconds",
)
# Columns averaged over processes (the rest are process 0's). The probe columns are empty on
# most steps, so they stay process 0's.
REDUCED_COLUMNS = LOG_COLUMNS[LOG_COLUMNS.index("loss_g") : LOG_COLUMNS.index("codebook_rms") + 1]
CHECKPOINT_PATTERN = re.compile(r"step_(\d{8})")


class WarmupCosine:
    """LR multiplier of step s: linear warm-up to 1 over `warmup` steps, then a cosine from
    `lr` down to `min_lr` at step `decay`, constant after. A plain object, so that
    `LambdaLR.state_dict()` stores its fields."""

    def __init__(self, lr: float, min_lr: float, warmup: int, decay: int):
        self.lr = lr
        self.min_lr = min_lr
        self.warmup = warmup
        self.decay = decay

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.decay - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr / self.lr


@dataclass
class TrainResult:
    """What a run did: the last step, its logged values and the last checkpoint written."""

    run_dir: Path
    step: int
    last_log: dict
    checkpoint: Path | None


# ------------------------------------------------------------------------------- processes


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def _start_processes(device: torch.device) -> Processes:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return Processes(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), started
    )


def _device(device: str | torch.device) -> torch.device:
    """The training device with an index on CUDA (`torch.cuda.set_device` refuses a bare
    "cuda"): the process's LOCAL_RANK under torchrun, else the current device."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        rank = os.environ.get("LOCAL_RANK")
        resolved = torch.device("cuda", torch.cuda.current_device() if rank is None else int(rank))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved


# ------------------------------------------------------------------------------- the model


def _sensevoice_weights(folder):
    """(SenseVoice state dict without unused keys, its config, am.mvn path) of a folder."""
    state, config, cmvn = sensevoice_files(folder)
    if state is None:
        raise CheckpointError(f"sensevoice_path: no model.pt in {str(folder)!r}")
    state = {k: v for k, v in state.items() if not k.startswith(SENSEVOICE_UNUSED_PREFIXES)}
    return state, config, cmvn


def _with_sensevoice(model: FlexiCodec, cfg: TrainConfig, folder) -> FlexiCodec:
    """`model`'s own weights with the frozen SenseVoice (and CMVN) from `folder`."""
    sv_state, sv_config, cmvn = _sensevoice_weights(folder)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(SENSEVOICE_PREFIX)}
    rebuilt, _ = build_from_state_dicts(
        model.config, own, sv_state, sv_config or cfg.sensevoice, cmvn
    )
    return rebuilt


def _load_matching(model: nn.Module, path) -> None:
    """Load every tensor of the checkpoint at `path` whose name and shape fit `model`."""
    state = normalise_weight_norm_keys(read_state_dict(path, "init_from.checkpoint"))
    own = model.state_dict()
    fits = {k: v.float() for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    log.info(
        "init_from %s: loaded %d tensors, %d keep their initialisation, %d checkpoint tensors "
        "unused",
        path,
        len(fits),
        len(set(own) - set(fits)),
        len(set(state) - set(fits)),
    )


def _apply_phase(config: FlexiCodecConfig, cfg: TrainConfig) -> None:
    if cfg.training.phase is not None:
        config.use_similarity_alignment = cfg.training.phase == 2
    if not config.use_similarity_alignment and (
        config.use_query_token_aggregator or config.use_bottleneck_transformer
    ):
        log.warning(
            "fixed 12.5 Hz training (phase 1) does not run the aggregators or the bottleneck "
            "transformer this model config builds; set use_query_token_aggregator and "
            "use_bottleneck_transformer to false for the phase-1 recipe"
        )


def build_initial_model(cfg: TrainConfig) -> FlexiCodec:
    """The model a fresh run starts from (CPU): official weights (`init_from`), or a seeded
    initialisation with the frozen SenseVoice from `sensevoice_path` when given."""
    t = cfg.training
    init = t.init_from
    if init is not None and init.strict:
        if init.config is None:
            raise CheckpointError("training.init_from.config: required with strict: true")
        model = prepare_model(init.checkpoint, init.config, init.sensevoice, device="cpu")
        if cfg.model is not None and cfg.model.to_dict() != model.config.to_dict():
            given, loaded = cfg.model.to_dict(), model.config.to_dict()
            diff = sorted(k for k in given if given[k] != loaded.get(k))
            raise CheckpointError(
                f"config: the `model:` section differs from init_from.config in {diff}; leave "
                "`model:` out or use init_from.strict: false"
            )
        _apply_phase(model.config, cfg)
        check_trainable(model.config)
        if t.repa:
            attach_repa_head(model)
            _load_repa(model, init.checkpoint)
        _attach_heads(model, cfg)
        return model
    _apply_phase(cfg.model, cfg)
    torch.manual_seed(t.seed)
    model = FlexiCodec(cfg.model, cfg.sensevoice)
    sensevoice = (init.sensevoice if init is not None else None) or t.sensevoice_path
    if sensevoice is not None:
        model = _with_sensevoice(model, cfg, sensevoice)
    elif init is None:
        log.warning(
            "no training.sensevoice_path: the frozen SenseVoice keeps its random weights (fine "
            "for tests, useless for a real codec)"
        )
    if t.repa:
        attach_repa_head(model)
    _attach_heads(model, cfg)
    if init is not None:
        _load_matching(model, init.checkpoint)
    return model


def _attach_heads(model: FlexiCodec, cfg: TrainConfig) -> None:
    w = cfg.training.loss_weights
    attach_training_heads(model, mae=w.mae > 0, ar=w.ar > 0)


def set_semantic_vocab(codec: FlexiCodec, cfg: TrainConfig, dataset, hop: int, device) -> None:
    """Make the `semantic_rvq` k-means vocabulary (`SemanticVocabConfig`): read it from
    `semantic_vocab.file`, or fit it on the SenseVoice features of the first batches (every
    process sees the same batches, so replicas agree). No global random draws."""
    v = cfg.training.semantic_vocab
    k, dim = codec.semantic_vocab.shape
    if v.file is not None:
        state = read_state_dict(v.file, "training.semantic_vocab.file")
        centroids = state.get("centroids")
        if centroids is None or tuple(centroids.shape) != (k, dim):
            raise CheckpointError(
                f"training.semantic_vocab.file: expected a `centroids` tensor [{k}, {dim}] "
                f"(k = codebook_size), got {None if centroids is None else list(centroids.shape)}"
            )
    else:
        one_process = BucketBatches(
            [f.num_samples for f in dataset.files],
            cfg.training.data.batch_size,
            cfg.training.data.crop_samples,
            hop,
            cfg.training.seed,
        )
        rows, epoch, taken = [], 0, 0
        while taken < v.fit_batches:
            for items in one_process.epoch(epoch)[: v.fit_batches - taken]:
                audio = collate([dataset[item] for item in items]).to(device)
                with torch.no_grad():
                    feats, feat_lens = codec.frontend(audio, None, 0.0)
                    sem, lens = codec.semantic(feats, feat_lens)
                valid = torch.arange(sem.shape[-1], device=device) < lens.view(-1, 1)
                rows.append(sem.transpose(1, 2)[valid].cpu())
                taken += 1
            epoch += 1
        features = torch.cat(rows)
        if features.shape[0] < k:
            raise InputError(
                f"training.semantic_vocab.fit_batches: {v.fit_batches} batches give "
                f"{features.shape[0]} SenseVoice frames, fewer than the {k} clusters "
                "(codebook_size); raise fit_batches"
            )
        centroids = fit_kmeans(features, k, v.kmeans_iters, cfg.training.seed)
        log.info("semantic vocabulary: k-means (k = %d) on %d frames", k, features.shape[0])
    codec.semantic_vocab.copy_(centroids.to(codec.semantic_vocab))


def _load_repa(model: nn.Module, path) -> None:
    """Copy `repa_mlp.*` from an official checkpoint when it has a fitting head."""
    if not hasattr(model, "repa_mlp") or not str(path).endswith(".safetensors"):
        return
    from safetensors import safe_open

    own = model.repa_mlp.state_dict()
    with safe_open(str(path), framework="pt") as f:
        found = {
            k[len("repa_mlp.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("repa_mlp.")
        }
    if set(found) == set(own) and all(found[k].shape == own[k].shape for k in own):
        model.repa_mlp.load_state_dict({k: v.float() for k, v in found.items()})


def _model_from_checkpoint(folder: Path, cfg: TrainConfig) -> FlexiCodec:
    """Rebuild the model saved in a checkpoint folder (SenseVoice from the checkpoint, else
    from `sensevoice_path` / `init_from.sensevoice`)."""
    config = FlexiCodecConfig.from_yaml(folder / "config.yaml")
    state = load_file(str(folder / "model.safetensors"))
    sv_state = sv_config = None
    cmvn = None
    if not any(k.startswith(SENSEVOICE_PREFIX) for k in state):
        t = cfg.training
        source = (t.init_from.sensevoice if t.init_from else None) or t.sensevoice_path
        if source is None:
            raise CheckpointError(
                f"resume: {folder} holds no SenseVoice weights (save_sensevoice: false); set "
                "training.sensevoice_path"
            )
        sv_state, sv_config, cmvn = _sensevoice_weights(source)
    kwargs = {} if cmvn is None else {"cmvn_path": cmvn}
    model, _ = build_from_state_dicts(
        config, state, sv_state, sv_config or cfg.sensevoice, **kwargs
    )
    if any(k.startswith("repa_mlp.") for k in state):
        attach_repa_head(model)
    attach_training_heads(
        model,
        mae=any(k.startswith("mae_head.") for k in state),
        ar=any(k.startswith("ar_predictor.") for k in state),
    )
    heads = {k: v for k, v in state.items() if k.startswith(TRAINING_HEADS)}
    model.load_state_dict({**model.state_dict(), **heads})
    return model


def gradient_groups(codec: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters of `codec` in the groups of `GRAD_GROUPS` (every group is
    present, possibly empty)."""
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GRAD_GROUPS}
    for name, p in codec.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        module = ".".join(parts[:2]) if parts[0] == "dac" else parts[0]
        groups[_GROUP_OF_MODULE.get(module, "other")].append(p)
    return groups


def group_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """`{"grad_<group>": l2 norm of the group's gradients}` (0 for a group without any)."""
    norms = {}
    for group, params in groups.items():
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else 0.0
        norms[f"grad_{group}"] = float(total)
    return norms


def codebook_rms(codec: nn.Module) -> float:
    """RMS of every entry of the acoustic RVQ's codebooks (`dac.quantizer.*codebook.weight`)."""
    rows = [
        p.detach().float().reshape(-1)
        for name, p in codec.dac.quantizer.named_parameters()
        if name.endswith("codebook.weight")
    ]
    return float(torch.cat(rows).pow(2).mean().sqrt())


def build_discriminator(cfg: TrainConfig) -> Discriminator:
    d = cfg.training.discriminator
    return Discriminator(d.periods, d.fft_sizes, d.mpd_channels, d.mrd_channels)


# ------------------------------------------------------------------------------- checkpoints


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [
        p
        for p in run_dir.iterdir()
        if CHECKPOINT_PATTERN.fullmatch(p.name) and (p / "trainer_state.pt").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": state["numpy_key"].numpy().astype(np.uint32),
                "pos": state["numpy_pos"],
            },
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )


def _digest(*modules: nn.Module) -> str:
    h = hashlib.sha256()
    for module in modules:
        for name, p in module.named_parameters():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _plain_state(module: nn.Module, drop_prefix: str | None = None) -> dict:
    return {
        k: v.detach().cpu().contiguous()
        for k, v in module.state_dict().items()
        if drop_prefix is None or not k.startswith(drop_prefix)
    }


# ------------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run (see `train`)."""

    def __init__(self, cfg: TrainConfig, data, run_dir, max_steps, resume, device, progress):
        self.cfg = cfg
        self.t = cfg.training
        self.run_dir = Path(run_dir)
        self.max_steps = self.t.max_steps if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise InputError(f"--max-steps: expected an integer >= 1, got {max_steps!r}")
        self.device = _device(device)
        self.procs = _start_processes(self.device)
        self.progress = progress
        self.step = 0
        self.epoch = 0
        self.position = 0

        existing = checkpoint_folders(self.run_dir)
        if existing and not resume:
            raise InputError(
                f"--out: {str(self.run_dir)!r} already holds checkpoints (last "
                f"{existing[-1].name}); pass --resume to continue it or choose another folder"
            )
        resume_from = existing[-1] if (resume and existing) else None
        if resume and resume_from is None and self.procs.main:
            log.info("--resume: no checkpoint in %s yet, starting a new run", self.run_dir)

        codec = (
            _model_from_checkpoint(resume_from, cfg)
            if resume_from is not None
            else build_initial_model(cfg)
        )
        if resume_from is not None and cfg.model is not None:
            _apply_phase(cfg.model, cfg)
            if cfg.model.to_dict() != codec.config.to_dict():
                raise CheckpointError(
                    f"--config: its `model:` section differs from the model of {resume_from}"
                )
        torch.manual_seed(self.t.seed)
        disc = build_discriminator(cfg)
        self.codec = codec.to(self.device).train()
        self.disc = disc.to(self.device).train()

        self.gen_params = [p for p in self.codec.parameters() if p.requires_grad]
        self.grad_groups = gradient_groups(self.codec)
        o = self.t.optimizer
        self.opt_g = torch.optim.AdamW(
            self.gen_params, o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        self.opt_d = torch.optim.AdamW(
            self.disc.parameters(), o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        schedule = WarmupCosine(o.lr, o.min_lr, o.warmup_steps, o.decay_steps)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, schedule)
        self.sched_d = (
            torch.optim.lr_scheduler.LambdaLR(self.opt_d, schedule)
            if o.schedule_discriminator
            else None
        )

        forward = TrainingForward(self.codec, cfg.forward_config())
        if self.procs.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Bypassed batches leave the RVQ unused, phase 1 the aggregators.
            self.generator = nn.parallel.DistributedDataParallel(
                forward, ids, find_unused_parameters=True
            )
            self.disc_ddp = nn.parallel.DistributedDataParallel(self.disc, ids)
        else:
            self.generator, self.disc_ddp = forward, self.disc

        paths = find_audio_files(data)
        files = scan_files(paths, self.t.data.min_samples)
        self.dataset = CropDataset(files, self.t.data.silence_peak)
        self.batches = BucketBatches(
            [f.num_samples for f in files],
            self.t.data.batch_size,
            self.t.data.crop_samples,
            self.codec.hop_length,
            self.t.seed,
            self.procs.rank,
            self.procs.world_size,
        )
        if self.procs.main:
            log.info(
                "%d usable audio files of %d; %d process(es) on %s",
                len(files),
                len(paths),
                self.procs.world_size,
                self.device,
            )

        vocab = getattr(self.codec, "semantic_vocab", None)
        if resume_from is None and vocab is not None and not bool(vocab.any()):
            set_semantic_vocab(self.codec, cfg, self.dataset, self.codec.hop_length, self.device)
        random.seed(self.t.seed + self.procs.rank)
        np.random.seed(self.t.seed + self.procs.rank)
        torch.manual_seed(self.t.seed + self.procs.rank)
        if resume_from is not None:
            self._load_training_state(resume_from)
        if self.procs.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.yaml").write_text(
                yaml.safe_dump(cfg.source, sort_keys=False)
            )
            self._open_log()
        self.procs.barrier()

    # ---------------------------------------------------------------- state

    def _load_training_state(self, folder: Path) -> None:
        state = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.disc.load_state_dict(load_file(str(folder / "discriminator.safetensors")))
        self.opt_g.load_state_dict(state["optimizer_g"])
        self.opt_d.load_state_dict(state["optimizer_d"])
        self.sched_g.load_state_dict(state["scheduler_g"])
        if self.sched_d is not None and state["scheduler_d"] is not None:
            self.sched_d.load_state_dict(state["scheduler_d"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        rng = folder / f"rng_rank{self.procs.rank}.pt"
        if state["world_size"] == self.procs.world_size and rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=True))
        elif self.procs.main:
            log.warning(
                "resume: %s was written by %d process(es), this run has %d; data order and "
                "random draws continue differently from an uninterrupted run",
                folder,
                state["world_size"],
                self.procs.world_size,
            )
        if self.procs.main:
            log.info("resumed from %s (step %d)", folder, self.step)

    def save_checkpoint(self) -> Path:
        final = self.run_dir / f"step_{self.step:08d}"
        staging = self.run_dir / f".{final.name}.partial"
        if self.procs.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.procs.barrier()
        torch.save(_rng_state(), staging / f"rng_rank{self.procs.rank}.pt")
        digest = _digest(self.codec, self.disc)
        digests = [digest]
        if self.procs.world_size > 1:
            digests = [None] * self.procs.world_size
            dist.all_gather_object(digests, digest)
        self.procs.barrier()
        if self.procs.main:
            drop = None if self.t.save_sensevoice else SENSEVOICE_PREFIX
            save_file(_plain_state(self.codec, drop), str(staging / "model.safetensors"))
            (staging / "config.yaml").write_text(
                yaml.safe_dump({"model": self.codec.config.to_dict()}, sort_keys=False)
            )
            save_file(_plain_state(self.disc), str(staging / "discriminator.safetensors"))
            torch.save(
                {
                    "step": self.step,
                    "epoch": self.epoch,
                    "position": self.position,
                    "world_size": self.procs.world_size,
                    "optimizer_g": self.opt_g.state_dict(),
                    "optimizer_d": self.opt_d.state_dict(),
                    "scheduler_g": self.sched_g.state_dict(),
                    "scheduler_d": None if self.sched_d is None else self.sched_d.state_dict(),
                },
                staging / "trainer_state.pt",
            )
            if self.procs.world_size > 1:
                (staging / "replicas.json").write_text(json.dumps({"digests": digests}, indent=1))
                if len(set(digests)) != 1:
                    log.error("replicas differ at step %d: %s", self.step, digests)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            keep = self.t.keep_checkpoints
            if keep:
                for old in checkpoint_folders(self.run_dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        self.procs.barrier()
        return final

    # ---------------------------------------------------------------- log

    def _open_log(self) -> None:
        path = self.run_dir / "train_log.csv"
        rows = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        self.log_file = path.open("w", newline="")
        self.log_writer = csv.DictWriter(self.log_file, LOG_COLUMNS)
        self.log_writer.writeheader()
        self.log_writer.writerows(rows)
        self.log_file.flush()

    def _reduce(self, values: dict) -> dict:
        if self.procs.world_size > 1:
            keys = list(REDUCED_COLUMNS)
            vector = torch.tensor([values[k] for k in keys], dtype=torch.float64)
            vector = vector.to(self.device)
            dist.all_reduce(vector)
            vector = (vector / self.procs.world_size).tolist()
            values = {**values, **dict(zip(keys, vector, strict=True))}
        return values

    # ---------------------------------------------------------------- loop

    def _audio_batches(self):
        """Batches from the current data position on, forever (epochs roll over)."""
        nw = self.t.data.num_workers
        while True:
            batches = self.batches.epoch(self.epoch)[self.position :]
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=batches,
                collate_fn=collate,
                num_workers=nw,
                # Own generator: creating a loader must not draw from the global one.
                generator=torch.Generator(),
                pin_memory=self.device.type == "cuda",
            )
            yield from loader
            self.epoch += 1
            self.position = 0

    def _autocast(self):
        if not self.t.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _discriminator_step(self, fake: torch.Tensor, real: torch.Tensor):
        """One discriminator update on detached `fake` and `real` `[B, 1, N]`; returns its
        loss and pre-clipping gradient norm."""
        o = self.t.optimizer
        batch = fake.shape[0]
        with self._autocast():
            scores = self.disc_ddp(torch.cat([fake, real]))
        d_fake = [[f[:batch] for f in maps] for maps in scores]
        d_real = [[f[batch:] for f in maps] for maps in scores]
        loss_d = discriminator_loss(d_fake, d_real)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        grad_d = nn.utils.clip_grad_norm_(self.disc.parameters(), o.grad_clip)
        self.opt_d.step()
        if self.sched_d is not None:
            self.sched_d.step()
        return loss_d, grad_d

    def _adversarial_terms(self, fake: torch.Tensor, real: torch.Tensor) -> dict:
        # The generator step reads the discriminator without building its parameter graph.
        self.disc.requires_grad_(False)
        with self._autocast():
            d_fake = self.disc(fake)
            with torch.no_grad():
                d_real = self.disc(real)
        self.disc.requires_grad_(True)
        return {
            "adversarial": adversarial_loss(d_fake),
            "feature_matching": feature_matching_loss(d_fake, d_real),
        }

    def _probe(self, latent: torch.Tensor, terms: dict, weights: dict) -> dict:
        """For `PROBED_TERMS`, with g = d (weight * term) / d latent: `probe_<term>` = |g|
        and `radial_<term>` = <g, latent> / |latent|, on the steps whose logged number is a
        multiple of `training.probe_every` (empty strings on other steps, 0 for a term that
        does not reach `latent`). One extra backward pass per term, through the graph that
        the step's own backward then uses."""
        every = self.t.probe_every
        if not every or (self.step + 1) % every:
            return {f"{kind}_{term}": "" for kind in ("probe", "radial") for term in PROBED_TERMS}
        probes = {}
        direction = latent.detach() / latent.detach().norm()
        for term in PROBED_TERMS:
            loss = weights[term] * terms[term]
            grad = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss, latent, retain_graph=True, allow_unused=True)
            probes[f"probe_{term}"] = 0.0 if grad is None else float(grad.norm())
            probes[f"radial_{term}"] = 0.0 if grad is None else float((grad * direction).sum())
        return probes

    def train_step(self, audio: torch.Tensor) -> dict:
        """One discriminator and one generator update on `audio` `[B, N]`; returns the
        values of this step's log row (this process's)."""
        o = self.t.optimizer
        w = self.t.loss_weights
        with self._autocast():
            out = self.generator(audio)
        fake, real = out.audio, out.target
        zero = fake.new_zeros(())
        loss_d = grad_d = zero
        if self.step >= self.t.discriminator_start:
            loss_d, grad_d = self._discriminator_step(fake.detach(), real)
        adversarial_start = self.t.adversarial_start
        if adversarial_start is None:
            adversarial_start = self.t.discriminator_start
        if self.step < adversarial_start:
            terms = {**out.losses, "adversarial": zero, "feature_matching": zero}
        else:
            terms = {**out.losses, **self._adversarial_terms(fake, real)}
        weights = {
            "mel": w.mel,
            "commitment": w.commitment,
            "codebook": w.codebook,
            "distill": w.distill,
            "repa": w.repa,
            "adversarial": w.adversarial,
            "feature_matching": w.feature_matching,
            "entropy": w.entropy,
            "spd": spd_loss_weight(self.step, self.t.spd_joint_from_step, w.spd),
            "mae": w.mae,
            "ar": w.ar,
        }
        loss_g = sum(weights[k] * terms[k] for k in weights)
        lr = self.opt_g.param_groups[0]["lr"]
        probes = self._probe(out.acoustic_latent, terms, weights)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        group_norms = group_grad_norms(self.grad_groups)
        grad_g = nn.utils.clip_grad_norm_(self.gen_params, o.grad_clip)
        self.opt_g.step()
        self.sched_g.step()

        values = {k: float(v.detach()) for k, v in terms.items()}
        values.update({k: float(v) for k, v in out.scales.items()})
        values.update(group_norms, codebook_rms=codebook_rms(self.codec), **probes)
        values.update(
            lr=lr,
            threshold="" if out.threshold is None else out.threshold,
            bypassed=int(out.bypassed),
            tokens_per_frame=float(out.num_groups.float().mean()) / out.frames,
            loss_g=float(loss_g.detach()),
            loss_d=float(loss_d.detach()),
            grad_norm_g=float(grad_g),
            grad_norm_d=float(grad_d),
        )
        return values

    def run(self) -> TrainResult:
        from tqdm import tqdm

        bar = tqdm(
            total=self.max_steps,
            initial=min(self.step, self.max_steps),
            disable=not (self.progress and self.procs.main),
            unit="step",
            dynamic_ncols=True,
        )
        last_log: dict = {}
        last_checkpoint = None
        try:
            if self.step < self.max_steps:
                batches = self._audio_batches()
                while self.step < self.max_steps:
                    start = time.perf_counter()
                    audio = next(batches).to(self.device, non_blocking=True)
                    values = self._reduce(self.train_step(audio))
                    self.step += 1
                    self.position += 1
                    values.update(
                        step=self.step, epoch=self.epoch, seconds=time.perf_counter() - start
                    )
                    last_log = values
                    if self.procs.main:
                        self.log_writer.writerow(
                            {k: repr(v) if isinstance(v, float) else v for k, v in values.items()}
                        )
                        self.log_file.flush()
                        bar.update(1)
                        if self.step % self.t.log_every == 0:
                            bar.set_postfix(
                                loss_g=f"{values['loss_g']:.3f}",
                                mel=f"{values['mel']:.3f}",
                                loss_d=f"{values['loss_d']:.3f}",
                            )
                    if self.step % self.t.checkpoint_every == 0 or self.step == self.max_steps:
                        last_checkpoint = self.save_checkpoint()
        finally:
            bar.close()
            if self.procs.main:
                self.log_file.close()
            if self.procs.started_here:
                dist.destroy_process_group()
        return TrainResult(self.run_dir, self.step, last_log, last_checkpoint)


def train(
    config: TrainConfig,
    data,
    out_dir,
    max_steps: int | None = None,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train (or with `resume`, continue) a run in `out_dir` on the audio in `data` (folders,
    audio files or list files) until step `max_steps` (default `training.max_steps`).

    Under `torchrun` every process calls this; process 0 writes `out_dir`.
    """
    return Trainer(config, data, out_dir, max_steps, resume, device, progress).run()
