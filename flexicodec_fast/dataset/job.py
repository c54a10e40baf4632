"""`encode_dataset`: list, plan, then run the Ray Data pipeline (decode tasks -> encoder
actors -> shard commits on the driver) for the shards not yet committed."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from ..options import EncodeOptions
from ..reference.errors import InputError
from .actor import Encoder
from .decode import decode_chunk, decode_tasks
from .errors import DatasetJobError, positive_int, require
from .model_spec import normalize_model_spec
from .plan import Plan, check_plan, plan_record
from .resources import pool_shape
from .shards import OutputFolder, ShardCollector
from .sources import list_source

log = logging.getLogger(__name__)


@dataclass
class DatasetReport:
    """What `encode_dataset` did. Throughput counts this run's clips only."""

    out: str
    shards: int
    shards_skipped: int
    shards_written: int
    files_encoded: int
    files_failed: int
    audio_seconds: float
    wall_seconds: float
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float

    @property
    def realtime_factor(self) -> float:
        """Audio seconds encoded per wall second (higher is better)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def summary(self) -> str:
        shards = (
            f"encode-dataset: {self.shards_written} shards written, {self.shards_skipped} "
            f"already done (skipped) of {self.shards}"
        )
        if not (self.files_encoded or self.files_failed):
            return shards
        return (
            f"{shards}; {self.files_encoded} clips encoded, {self.files_failed} failed; "
            f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s "
            f"({self.realtime_factor:.1f}x real time) with {self.num_actors} actor(s)"
        )


def encode_dataset(
    source,
    output: str | os.PathLike,
    model_spec="builtin",
    *,
    num_quantizers: int | None = 8,
    merging_threshold: float = 0.91,
    target_frame_rate: float | None = None,
    precision: str = "fp32",
    mix_down: bool = False,
    shard_size: int = 1000,
    batch_size: int = 8,
    bucket_size: int | None = None,
    max_batch_seconds: float | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    decode_cpus: float = 1.0,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> DatasetReport:
    """Encode a corpus with Ray Data into parquet shards under `output` (see
    `flexicodec_fast.distributed` for the layout); resumable, per-file failures go to the
    errors table.

    source: folder, manifest, audio file or list of files (`list_source`); local or URI.
    output: folder, local or URI (`s3://...`); must be reachable from the driver.
    model_spec: see `normalize_model_spec`; each actor loads its own copy.
    num_quantizers, merging_threshold, target_frame_rate, precision, mix_down: as for
        `fast_encode` / `flexicodec-fast encode` (`EncodeOptions`; None or more quantizers
        than the model has means all it has); they (with the listing and `shard_size`) must
        stay the same across reruns into one output folder.
    shard_size: clips per part file.
    batch_size: clips per engine batch at most; bucket_size: clips per actor call, which
        the actor's `Engine` groups by length into batches (default 8 x batch_size);
        max_batch_seconds: cap on the padded audio of one batch (clips x bucket length), for
        corpora with long clips.
    num_actors, gpus_per_actor, cpus_per_actor: the encoder pool. Defaults: one actor per
        GPU with 1 CPU each when the cluster has GPUs; else one CPU actor holding the CPUs
        decoding leaves. An actor with GPUs runs on CUDA, else on CPU with
        max(1, int(cpus_per_actor)) torch threads.
    decode_cpus: CPUs reserved by each decode task.
    address, num_cpus: how to reach Ray when this process is not connected yet: `address`
        of an existing cluster (default: $RAY_ADDRESS, else a new local Ray with `num_cpus`
        logical CPUs). A connection made here is closed on return.
    """
    ray = require("ray")
    require("pyarrow")
    options = EncodeOptions(
        num_quantizers=num_quantizers,
        merging_threshold=merging_threshold,
        target_frame_rate=target_frame_rate,
        precision=precision,
        mix_down=mix_down,
    )
    spec = normalize_model_spec(model_spec)
    positive_int("shard_size", shard_size)
    positive_int("batch_size", batch_size)
    bucket_size = positive_int(
        "bucket_size", 8 * batch_size if bucket_size is None else bucket_size
    )
    if max_batch_seconds is not None and not max_batch_seconds > 0:
        raise InputError(f"max_batch_seconds: expected a positive number, got {max_batch_seconds}")
    if num_cpus is not None and (address is not None or ray.is_initialized()):
        raise InputError("num_cpus: applies only to a new local Ray (no address, not connected)")

    out = os.fspath(output)
    listing = list_source(source)
    plan = Plan([i for i, _ in listing], [u for _, u in listing], shard_size)
    output_dir = OutputFolder(out)
    output_dir.create()
    committed = output_dir.committed()
    record = check_plan(
        # A plan without committed shards binds nothing (say, a first run that stopped on a
        # bad option): it is replaced.
        output_dir.read_plan() if committed else None,
        plan_record(plan, spec, options),
        out,
    )
    output_dir.write_plan(record)
    done = committed & set(range(plan.num_shards))
    pending = [s for s in range(plan.num_shards) if s not in done]
    output_dir.remove_stale(pending)
    if not pending:
        # Nothing to do: no Ray start-up (seconds) for a finished folder.
        report = DatasetReport(out, plan.num_shards, len(done), 0, 0, 0, 0.0, 0.0, 0, 0.0, 0.0)
        log.info(report.summary())
        return report

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(
            address=address,
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.INFO if progress else logging.WARNING,
        )
    try:
        local = connected_here and address is None and not os.environ.get("RAY_ADDRESS")
        if local and spec.get("checkpoint"):
            for key in ("checkpoint", "config", "sensevoice"):
                if spec[key] is not None and not os.path.exists(spec[key]):
                    raise DatasetJobError(f"model_spec: {key} {spec[key]!r} does not exist")
        shape = pool_shape(ray, local, num_actors, gpus_per_actor, cpus_per_actor, decode_cpus)
        report = DatasetReport(out, plan.num_shards, len(done), 0, 0, 0, 0.0, 0.0, *shape)
        _run(
            ray,
            plan,
            pending,
            output_dir,
            record,
            spec,
            options,
            report,
            batch_size=batch_size,
            bucket_size=bucket_size,
            max_batch_samples=None if max_batch_seconds is None else int(max_batch_seconds * 16000),
            decode_cpus=decode_cpus,
            progress=progress,
        )
    finally:
        if connected_here:
            ray.shutdown()
    log.info(report.summary())
    return report


def _run(ray, plan, pending, output_dir, record, spec, options, report, **kw) -> None:
    """Build and drain the Ray Data pipeline for the pending shards, committing each shard as
    soon as all its clips are in."""
    from tqdm import tqdm

    chunks = decode_tasks(plan, pending)
    total = sum(len(c["index"]) for c in chunks)
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    # Our bar counts clips and audio; Ray's per-operator bars would interleave with it.
    context.enable_progress_bars = False
    try:
        ds = ray.data.from_items(chunks)
        ds = ds.map_batches(
            decode_chunk,
            fn_kwargs={"mix_down": options.mix_down},
            batch_size=1,
            num_cpus=kw["decode_cpus"],
        )
        # A separate operator between decoding and the actors: it hands each actor call
        # `bucket_size` clips, and keeps decoding in its own CPU tasks (Ray fuses a task stage into
        # a following actor stage whose resources match, which would serialise decoding with
        # the model inside the actors).
        ds = ds.repartition(target_num_rows_per_block=kw["bucket_size"])
        ds = ds.map_batches(
            Encoder,
            fn_constructor_kwargs={
                "model_spec": spec,
                "options": options,
                "batch_size": kw["batch_size"],
                "max_batch_samples": kw["max_batch_samples"],
                "threads": max(1, int(report.cpus_per_actor)),
                "use_gpu": report.gpus_per_actor > 0,
            },
            batch_size=kw["bucket_size"],
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=report.num_actors),
            num_cpus=report.cpus_per_actor,
            num_gpus=report.gpus_per_actor or None,
        )
        collector = ShardCollector(plan, pending, output_dir, record, options, report)
        with tqdm(total=total, unit="clip", disable=not kw["progress"], desc="encode") as bar:
            start = time.perf_counter()
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(collector.add(table))
                report.wall_seconds = time.perf_counter() - start
                bar.set_postfix(
                    shards=f"{report.shards_skipped + report.shards_written}/{report.shards}",
                    rtf=f"{report.realtime_factor:.1f}x",
                    failed=report.files_failed,
                )
    finally:
        context.enable_progress_bars = bars
    if collector.buffers:
        raise DatasetJobError(
            f"Ray Data finished without every clip of shards {sorted(collector.buffers)[:10]}; "
            "rerun to redo them"
        )
