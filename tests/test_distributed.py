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


def test_length_buckets_group_similar_lengths():
    lengths = [50, 10, 40, 20, 30, 1000]
    assert dist.length_buckets(lengths, 2) == [[1, 3], [4, 2], [0, 5]]
    # At most 90 padded samples (clips x longest) per batch: a long clip goes alone.
    assert dist.length_buckets(lengths, 4, max_batch_samples=90) == [[1, 3, 4], [2], [0], [5]]


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
