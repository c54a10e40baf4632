"""Corpus encoding on Ray Data and the Hugging Face `datasets` helpers (the `[ray]` extra).

A local Ray cluster (2 logical CPUs, 2 encoder actors) encodes a small generated corpus with
the tiny model; every clip's codes must equal per-file `fast_encode` exactly, a rerun after
deleting a shard must redo that shard only, and unusable files must land in the errors
table. Tests that need Ray or `datasets` are skipped when the extra is absent, so the rest of
the suite still runs; listing, planning and option checks run either way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec_fast import distributed as dist
from flexicodec_fast.dataset.actor import Encoder
from flexicodec_fast.dataset.decode import decode_chunk
from flexicodec_fast.dataset.plan import Plan, check_plan, plan_record
from flexicodec_fast.dataset.shards import OutputFolder
from flexicodec_fast.fast import fast_encode
from flexicodec_fast.jobs import read_audio
from flexicodec_fast.options import EncodeOptions
from flexicodec_fast.reference.errors import InputError
from flexicodec_fast.tiny import random_tiny_model

HAS_RAY = importlib.util.find_spec("ray") is not None
HAS_ARROW = importlib.util.find_spec("pyarrow") is not None
HAS_DATASETS = importlib.util.find_spec("datasets") is not None
EXTRA = "the [ray] extra is not installed: pip install -e '.[ray]'"
needs_ray = pytest.mark.skipif(not (HAS_RAY and HAS_ARROW), reason=EXTRA)
needs_arrow = pytest.mark.skipif(not HAS_ARROW, reason=EXTRA)
needs_datasets = pytest.mark.skipif(not (HAS_DATASETS and HAS_ARROW), reason=EXTRA)

NQ = 4
SHARD = 5
# Two actors and the decode tasks share two logical CPUs.
POOL = {"num_actors": 2, "cpus_per_actor": 0.5, "decode_cpus": 0.5}
RATES = (16000, 22050, 8000, 44100)


def _write_corpus(root: Path) -> dict[str, Path]:
    """20 good clips (four sample rates, one stereo, 0.3 to 1.6 s: sines plus noise), one
    file that is not audio and one too short to encode."""
    rng = np.random.default_rng(0)
    files = {}
    for i in range(20):
        sr = RATES[i % 4]
        t = np.arange(int(rng.uniform(0.3, 1.6) * sr)) / sr
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(80, 900) * t) + 0.05 * rng.standard_normal(
            t.size
        )
        if i == 7:
            wav = np.stack([wav, 0.5 * wav[::-1]], axis=1)
        path = root / f"spk{i % 3}" / f"clip{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wav.astype(np.float32), sr)
        files[path.relative_to(root).as_posix()] = path
    (root / "spk1" / "corrupt.wav").write_bytes(b"this is not a wav file" * 10)
    sf.write(root / "spk2" / "short.wav", np.zeros(500, np.float32), 16000)
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, _write_corpus(root)


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(seed=0)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def encoded(ray_cluster, corpus, tmp_path_factory):
    """The corpus encoded once by the Ray pipeline: (output folder, report)."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("codes")
    report = dist.encode_dataset(
        root,
        out,
        {"tiny_seed": 0},
        num_quantizers=NQ,
        mix_down=True,
        shard_size=SHARD,
        batch_size=3,
        progress=False,
        **POOL,
    )
    return out, report


def _rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted(out.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]


def _assert_codes_equal(row, path: Path, model, num_quantizers=NQ):
    ref = fast_encode(read_audio(path, mix_down=True)[None], model, num_quantizers=num_quantizers)
    codes = dist.codes_from_row(row)
    assert torch.equal(codes.semantic_codes, ref["semantic_codes"]), row["id"]
    assert torch.equal(codes.acoustic_codes, ref["acoustic_codes"]), row["id"]
    assert torch.equal(codes.token_lengths, ref["token_lengths"]), row["id"]
    assert torch.equal(codes.total_frames, ref["total_frames"]), row["id"]


# --------------------------------------------------------------- without a cluster


@needs_arrow
def test_listing_is_sorted_and_manifests_resolve(corpus, tmp_path):
    root, files = corpus
    listing = dist.list_source(root)
    ids = [i for i, _ in listing]
    assert ids == sorted([*files, "spk1/corrupt.wav", "spk2/short.wav"])
    assert all(Path(u) == root / i for i, u in listing)

    rel = sorted(files)[:3]
    (tmp_path / "m.txt").write_text("# clips\n" + "\n".join(str(root / r) for r in rel) + "\n")
    assert [u for _, u in dist.list_source(tmp_path / "m.txt")] == [str(root / r) for r in rel]
    (tmp_path / "m.csv").write_text(
        "id,path\n" + "".join(f"c{n},{root / r}\n" for n, r in enumerate(rel))
    )
    assert [i for i, _ in dist.list_source(tmp_path / "m.csv")] == ["c0", "c1", "c2"]
    lines = [json.dumps({"path": r}) for r in rel]
    (root / "m.jsonl").write_text("\n".join(lines))  # relative to the manifest's folder
    try:
        assert [u for _, u in dist.list_source(root / "m.jsonl")] == [str(root / r) for r in rel]
    finally:
        (root / "m.jsonl").unlink()

    with pytest.raises(InputError, match="unique"):
        dist.list_source([str(root / rel[0]), str(root / rel[0])])
    with pytest.raises(InputError, match="does not exist"):
        dist.list_source(tmp_path / "missing")


def test_model_spec_and_options_are_checked():
    assert dist.normalize_model_spec("builtin") == {"builtin": True}
    assert dist.normalize_model_spec({"tiny_seed": 3}) == {"tiny_seed": 3}
    spec = dist.normalize_model_spec({"checkpoint": "w.safetensors", "config": "c.yaml"})
    assert Path(spec["checkpoint"]).is_absolute() and spec["sensevoice"] is None
    with pytest.raises(InputError, match="model_spec"):
        dist.normalize_model_spec({"checkpoint": "w.safetensors"})
    with pytest.raises(InputError, match="precision"):
        dist.EncodeOptions(precision="fp8")
    with pytest.raises(InputError, match="target_frame_rate"):
        dist.EncodeOptions(target_frame_rate=20.0)


def test_plans_written_before_the_newer_settings_still_bind_a_rerun():
    plan = Plan(["a", "b", "c"], ["/a", "/b", "/c"], 2)
    now = plan_record(plan, {"tiny_seed": 0}, EncodeOptions(num_quantizers=NQ, mix_down=True))
    # The options of a version-1 plan written before attention_window and dither were
    # recorded (those runs had exact attention and no dither).
    old_options = {
        "num_quantizers": NQ,
        "merging_threshold": 0.91,
        "target_frame_rate": None,
        "precision": "fp32",
        "mix_down": True,
    }
    old = {**now, "options": old_options, "model_fingerprint": "f00d"}
    assert check_plan(old, now, "out") == {**now, "model_fingerprint": "f00d"}
    for other in (
        EncodeOptions(num_quantizers=NQ + 1, mix_down=True),
        EncodeOptions(num_quantizers=NQ, mix_down=True, attention_window=2.0),
    ):
        with pytest.raises(dist.DatasetJobError, match="other settings"):
            check_plan(old, plan_record(plan, {"tiny_seed": 0}, other), "out")


@needs_arrow
def test_actor_encodes_with_all_quantizers_when_asked_for_more(corpus, model):
    """The actor, called as Ray calls it on a decoded bucket: more quantizers than the tiny
    model has (1 + 4) give the codes of all it has, with a warning."""
    _, files = corpus
    ids = sorted(files)[5:8]
    chunk = {
        "index": [[0, 1, 2]],
        "shard": [0],
        "id": [ids],
        "source": [[str(files[i]) for i in ids]],
    }
    threads = torch.get_num_threads()
    with pytest.warns(UserWarning, match="more than this model has"):
        actor = Encoder({"tiny_seed": 0}, EncodeOptions(num_quantizers=8), 2, None, threads, False)
    assert actor.options.num_quantizers == model.max_num_quantizers
    rows = actor(decode_chunk(chunk, mix_down=True)).to_pylist()
    assert [r["id"] for r in rows] == ids and not any(r["error"] for r in rows)
    for row in rows:
        _assert_codes_equal(row, files[row["id"]], model, num_quantizers=None)


def _decoded(clips: list[np.ndarray]) -> dict:
    """A bucket as `decode_chunk` hands it to the actor, read-only like Ray's."""
    audio = np.empty(len(clips), dtype=object)
    for n, clip in enumerate(clips):
        audio[n] = clip.view()
        audio[n].setflags(write=False)
    return {
        "index": np.arange(len(clips), dtype=np.int64),
        "shard": np.zeros(len(clips), dtype=np.int64),
        "id": np.array([f"c{n}" for n in range(len(clips))], dtype=object),
        "source": np.array([f"/c{n}" for n in range(len(clips))], dtype=object),
        "audio": audio,
        "error": np.array([""] * len(clips), dtype=object),
    }


def _assert_clip_codes_equal(row, clip: np.ndarray, model):
    ref = fast_encode(torch.from_numpy(clip)[None], model, num_quantizers=NQ)
    codes = dist.codes_from_row(row)
    for key in ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames"):
        assert torch.equal(getattr(codes, key), ref[key]), (row["id"], key)
    assert row["audio_samples"] == clip.size and row["threshold"] == 0.91


@needs_arrow
def test_actor_runs_one_engine_and_isolates_bad_clips(monkeypatch, model):
    """The actor makes its engine once and encodes each call's clips with one
    `Engine.encode_many` (no `fast_encode`); a clip the engine refuses (NaN, too short)
    becomes an encode error row and the others keep their single-clip codes."""
    import flexicodec_fast.fast as fast
    from flexicodec_fast.engine import Engine

    made, calls = [], []
    init, encode_many = Engine.__init__, Engine.encode_many

    def counting_init(self, *args, **kwargs):
        made.append(kwargs)
        init(self, *args, **kwargs)

    def counting_encode_many(self, clips):
        calls.append(len(clips))
        return encode_many(self, clips)

    def no_fast_encode(*args, **kwargs):
        raise AssertionError("the actor called fast_encode")

    monkeypatch.setattr(Engine, "__init__", counting_init)
    monkeypatch.setattr(Engine, "encode_many", counting_encode_many)
    monkeypatch.setattr(fast, "fast_encode", no_fast_encode)
    threads = torch.get_num_threads()
    actor = Encoder({"tiny_seed": 0}, EncodeOptions(num_quantizers=NQ), 2, None, threads, False)
    rng = np.random.default_rng(1)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (9000, 4000, 21000, 6500)]
    nan = clips[1].copy()
    nan[100] = np.nan
    bad = {1: (nan, "expected finite samples"), 3: (clips[3][:1000], "expected at least 1360")}
    first = actor(_decoded([bad.get(n, (c,))[0] for n, c in enumerate(clips)])).to_pylist()
    second = actor(_decoded(clips[:2])).to_pylist()
    monkeypatch.undo()

    assert (len(made), calls) == (1, [4, 2])
    assert made[0]["errors"] == "yield" and made[0]["max_batch"] == 2
    for n, row in enumerate(first):
        if n in bad:
            assert row["stage"] == "encode" and row["semantic_codes"] is None
            # The row's own message, not the clip's position inside the engine call.
            assert row["error"].startswith(f"InputError: {bad[n][1]}"), row["error"]
        else:
            assert row["stage"] is None and row["error"] is None
            _assert_clip_codes_equal(row, clips[n], model)
    for row, clip in zip(second, clips[:2], strict=True):
        _assert_clip_codes_equal(row, clip, model)


@needs_arrow
def test_a_failing_batch_is_retried_clip_by_clip(monkeypatch, model):
    """A batch that fails in the model (out of memory, say) is retried one clip at a time;
    only a clip that fails alone becomes an error row."""
    from flexicodec_fast.engine import Engine

    rng = np.random.default_rng(2)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (9000, 8000, 7000)]
    run = Engine._encode_batch

    def out_of_memory(self, key, sources, credit):
        if len(sources) > 1 or sources[0][0].shape[0] == 8000:
            raise torch.OutOfMemoryError("CUDA out of memory (planted)")
        return run(self, key, sources, credit)

    monkeypatch.setattr(Engine, "_encode_batch", out_of_memory)
    actor = Encoder({"tiny_seed": 0}, EncodeOptions(num_quantizers=NQ), 4, None, 1, False)
    rows = actor(_decoded(clips)).to_pylist()
    monkeypatch.undo()
    assert [r["stage"] for r in rows] == [None, "encode", None]
    assert rows[1]["error"] == "OutOfMemoryError: CUDA out of memory (planted)"
    for n in (0, 2):
        _assert_clip_codes_equal(rows[n], clips[n], model)


def test_max_batch_seconds_caps_the_padded_audio_of_a_batch(model):
    """`max_batch_samples` becomes the engine's memory budget: no bucket's batch holds more
    padded samples than the cap (a bucket longer than the cap runs one clip at a time)."""
    from flexicodec_fast.dataset.encode import corpus_engine

    cap = 6 * 16000
    engine = corpus_engine(model, EncodeOptions(num_quantizers=NQ), 64, cap)
    # As many clips as the cap allows (at least one), at most batch_size.
    assert [b.batch for b in engine.buckets] == [
        max(1, min(64, cap // b.samples)) for b in engine.buckets
    ]
    # The 1, 2 and 3 s buckets are 13, 25 and 38 hops of 1280 samples.
    assert [(b.samples, b.batch) for b in engine.buckets[:3]] == [
        (16640, 5),
        (32000, 3),
        (48640, 1),
    ]
    # Without a cap, batch_size bounds the batch (the CPU default, 2 GiB, fits 17 of 30 s).
    uncapped = corpus_engine(model, EncodeOptions(num_quantizers=NQ), 5)
    assert {b.batch for b in uncapped.buckets} == {5}


@needs_arrow
def test_part_file_records_the_quantizers_its_codes_hold(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flexicodec_fast.dataset.columns import row_schema

    row = {
        "index": 0, "id": "a", "source": "/a", "audio_samples": 2560, "num_frames": 2,
        "total_frames": 2, "threshold": 0.91, "token_lengths": [1, 1], "semantic_codes": [3, 4],
        "acoustic_codes": [[1, 2], [5, 6]], "model_fingerprint": "f00d", "shard": 0,
        "stage": None, "error": None,
    }  # fmt: skip
    output = OutputFolder(str(tmp_path))
    output.create()
    # Asked for 8; the codes hold 1 semantic + 2 acoustic stages.
    output.commit(0, pa.Table.from_pylist([row], schema=row_schema()), {"num_quantizers": 8})
    meta = pq.read_schema(tmp_path / dist.shard_name(0)).metadata
    assert (meta[b"num_quantizers"], meta[b"shard"]) == (b"3", b"0")


def test_missing_extra_is_a_clear_error(monkeypatch, corpus, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(dist.DatasetJobError, match=r"\[ray\] extra"):
        dist.encode_dataset(corpus[0], tmp_path, {"tiny_seed": 0})


def test_cli_parser_registers_encode_dataset():
    parser = argparse.ArgumentParser()
    dist.add_encode_dataset_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["encode-dataset", "clips/", "-o", "out", "--num-actors", "2", "--tiny-seed", "0"]
    )
    assert args.func is dist.cmd_encode_dataset
    assert (args.source, args.num_actors, args.tiny_seed, args.shard_size) == (
        ["clips/"],
        2,
        0,
        1000,
    )


# --------------------------------------------------------------- local Ray cluster


@needs_ray
def test_codes_equal_per_file_fast_encode(encoded, corpus, model):
    out, report = encoded
    _, files = corpus
    rows = _rows(out)
    assert [r["id"] for r in rows] == sorted(files)
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    for row in rows:
        assert row["source"] == str(files[row["id"]])
        _assert_codes_equal(row, files[row["id"]], model)
    fingerprints = {r["model_fingerprint"] for r in rows}
    plan = json.loads((out / dist.PLAN_FILE).read_text())
    assert fingerprints == {plan["model_fingerprint"]}
    assert (report.shards, report.shards_written, report.shards_skipped) == (5, 5, 0)
    assert (report.files_encoded, report.files_failed, report.num_actors) == (20, 2, 2)


@needs_ray
def test_unusable_files_land_in_the_errors_table(encoded):
    out, _ = encoded
    errors = dist.load_errors(str(out)).to_pylist()
    assert [(e["id"], e["stage"]) for e in errors] == [
        ("spk1/corrupt.wav", "decode"),
        ("spk2/short.wav", "decode"),
    ]
    assert "not a readable audio file" in errors[0]["error"]
    assert "samples at 16 kHz" in errors[1]["error"]


@needs_ray
def test_rerun_redoes_only_the_deleted_shard(encoded, corpus):
    import pyarrow.parquet as pq

    out, _ = encoded
    root, _ = corpus
    parts = sorted(out.glob("part-*.parquet"))
    error_shards = {int(f.stem.split("-")[1]) for f in (out / dist.ERRORS_DIR).glob("*.parquet")}
    victim = next(p for n, p in enumerate(parts) if n not in error_shards)
    before = pq.read_table(victim)
    mtimes = {p: p.stat().st_mtime_ns for p in parts if p != victim}
    victim.unlink()
    (out / "part-00003.parquet.tmp").write_bytes(b"left by an interrupted run")

    parser = argparse.ArgumentParser()
    dist.add_encode_dataset_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "encode-dataset", str(root), "-o", str(out), "--tiny-seed", "0",
            "--num-quantizers", str(NQ), "--mix-down", "--shard-size", str(SHARD),
            "--batch-size", "4", "--num-actors", "2", "--cpus-per-actor", "0.5",
            "--decode-cpus", "0.5", "--quiet",
        ]
    )  # fmt: skip
    assert args.func(args) == 0  # the redone shard has no failed files

    assert victim.exists() and pq.read_table(victim).equals(before)
    assert {p: p.stat().st_mtime_ns for p in parts if p != victim} == mtimes
    assert not list(out.glob("*.tmp"))

    report = dist.encode_dataset(
        root, out, {"tiny_seed": 0}, num_quantizers=NQ, mix_down=True, shard_size=SHARD,
        progress=False, **POOL,
    )  # fmt: skip
    assert (report.shards_written, report.shards_skipped, report.files_encoded) == (0, 5, 0)


@needs_ray
def test_rerun_with_other_settings_is_refused(encoded, corpus):
    out, _ = encoded
    with pytest.raises(dist.DatasetJobError, match="other settings"):
        dist.encode_dataset(corpus[0], out, {"tiny_seed": 0}, num_quantizers=NQ + 1, **POOL)
    with pytest.raises(dist.DatasetJobError, match="shard_size"):
        dist.encode_dataset(
            corpus[0], out, {"tiny_seed": 0}, num_quantizers=NQ, mix_down=True, shard_size=7
        )


# --------------------------------------------------------------- Hugging Face datasets


@needs_datasets
def test_hf_dataset_gets_per_file_codes(corpus, model):
    import datasets

    from flexicodec_fast.hf_datasets import encode_hf_dataset

    _, files = corpus
    ids = sorted(files)[6:12]  # includes the stereo clip07
    ds = datasets.Dataset.from_dict({"audio": [str(files[i]) for i in ids], "id": ids})
    ds = ds.cast_column("audio", datasets.Audio())
    enc = encode_hf_dataset(ds, model, num_quantizers=NQ, mix_down=True, batch_size=3)
    assert isinstance(enc.features["audio"], datasets.Audio) and enc["id"] == ids
    for row in enc.remove_columns("audio"):
        _assert_codes_equal(row, files[row["id"]], model)

    # In-memory samples ({"array" [C, N], "sampling_rate"}) give the same codes.
    cells = []
    for i in ids:
        wav, sr = sf.read(files[i], dtype="float32", always_2d=True)
        cells.append({"array": wav.T.tolist(), "sampling_rate": sr})
    arrays = datasets.Dataset.from_dict({"audio": cells})
    enc2 = encode_hf_dataset(arrays, model, num_quantizers=NQ, mix_down=True, batch_size=8)
    for key in dist.CODES_COLUMNS:
        assert enc2[key] == enc[key], key

    with pytest.raises(InputError, match=r"audio\[0\]: 2 channels"):
        encode_hf_dataset(arrays.select([ids.index("spk1/clip07.wav")]), model, num_quantizers=NQ)


@needs_datasets
def test_hf_map_calls_share_one_engine(monkeypatch, model):
    """One engine for every `map` batch of a call, one `encode_many` per batch, no
    `fast_encode`; each clip keeps its single-clip codes, and a clip the engine refuses raises
    an `InputError` naming its row."""
    import datasets

    import flexicodec_fast.fast as fast
    from flexicodec_fast import hf_datasets
    from flexicodec_fast.engine import Engine
    from flexicodec_fast.hf_datasets import encode_hf_dataset

    rng = np.random.default_rng(3)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (7000, 15000, 3000, 9000)]
    ds = datasets.Dataset.from_dict({"audio": [c.tolist() for c in clips]})
    made, calls = [], []
    init, encode_many = Engine.__init__, Engine.encode_many

    def counting_init(self, *args, **kwargs):
        made.append(kwargs)
        init(self, *args, **kwargs)

    def counting_encode_many(self, batch):
        calls.append(len(batch))
        return encode_many(self, batch)

    def no_fast_encode(*args, **kwargs):
        raise AssertionError("encode_hf_dataset called fast_encode")

    monkeypatch.setattr(Engine, "__init__", counting_init)
    monkeypatch.setattr(Engine, "encode_many", counting_encode_many)
    monkeypatch.setattr(fast, "fast_encode", no_fast_encode)
    enc = encode_hf_dataset(
        ds, model, sample_rate=16000, num_quantizers=NQ, batch_size=2, bucket_size=3
    )
    nan = ds.select([0, 1]).map(
        lambda r, i: {"audio": [np.nan] * 4000} if i else r, with_indices=True
    )
    # Past the reading checks (which refuse NaN first), the engine's refusal names the row.
    monkeypatch.setattr(
        hf_datasets, "to_model_audio", lambda wav, rate, mix: torch.tensor(wav[:, 0])
    )
    with pytest.raises(InputError, match=r"^audio\[1\]: expected finite samples"):
        encode_hf_dataset(nan, model, sample_rate=16000, num_quantizers=NQ)
    monkeypatch.undo()

    assert (len(made), calls) == (2, [3, 1, 2])
    assert made[0]["max_batch"] == 2
    for row, clip in zip(enc.remove_columns("audio"), clips, strict=True):
        _assert_clip_codes_equal(row, clip, model)


@needs_ray
@needs_datasets
def test_shards_load_back_as_a_dataset(encoded, corpus, model):
    import datasets

    from flexicodec_fast.hf_datasets import encode_hf_dataset, load_codes_dataset

    out, _ = encoded
    _, files = corpus
    loaded = load_codes_dataset(out)
    assert loaded.column_names == list(dist.PART_COLUMNS)
    assert loaded.to_list() == _rows(out)

    # The Ray pipeline and the datasets helper give the same rows for the same files.
    loaded = loaded.select(range(0, len(loaded), 4))
    ids = loaded["id"]
    ds = datasets.Dataset.from_dict({"audio": [str(files[i]) for i in ids]})
    ds = ds.cast_column("audio", datasets.Audio())
    enc = encode_hf_dataset(ds, model, num_quantizers=NQ, mix_down=True)
    for key in dist.CODES_COLUMNS:
        assert enc[key] == loaded[key], key
