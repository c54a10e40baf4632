"""The Ray actor that encodes: one model and one `Engine` per actor, made once, encoding
buckets of decoded clips into rows of `columns.row_schema()`."""

from __future__ import annotations

import numpy as np
import torch

from ..options import EncodeOptions
from .columns import CODES_COLUMNS, row_schema
from .encode import corpus_engine, encode_clips
from .model_spec import load_model_spec


class Encoder:
    """Actor: one model and its `Engine`, made once; encodes buckets of decoded clips.

    batch_size, max_batch_samples: the engine's batches (`encode.corpus_engine`); threads:
    torch threads; use_gpu: run on CUDA (the actor holds a GPU), else on the CPU."""

    def __init__(
        self,
        model_spec: dict,
        options: EncodeOptions,
        batch_size: int,
        max_batch_samples: int | None,
        threads: int,
        use_gpu: bool,
    ):
        torch.set_num_threads(threads)
        model = load_model_spec(model_spec, "cuda" if use_gpu else "cpu")
        # The engine resolves the options once, so an actor warns once when asked for more
        # quantizers than the model has.
        self.engine = corpus_engine(model, options, batch_size, max_batch_samples)
        self.options = self.engine.options

    def __call__(self, batch: dict):
        """A bucket of `decode.decode_chunk` rows -> a pyarrow Table of `row_schema()`:
        codes for the clips that encode, stage and error for the others."""
        import pyarrow as pa

        n = len(batch["index"])
        columns = {key: [None] * n for key in CODES_COLUMNS}
        stage = ["decode" if batch["error"][i] else None for i in range(n)]
        errors = [batch["error"][i] or None for i in range(n)]
        good = [i for i in range(n) if not errors[i]]
        # A copy: the batch is a read-only view into the object store.
        clips = [torch.from_numpy(np.array(batch["audio"][i], dtype=np.float32)) for i in good]
        codes, failures = encode_clips(self.engine, clips)
        for j, i in enumerate(good):
            if failures[j] is not None:
                stage[i], errors[i] = "encode", f"{type(failures[j]).__name__}: {failures[j]}"
            for key in CODES_COLUMNS:
                columns[key][i] = codes[key][j]
        return pa.Table.from_pydict(
            {
                "index": batch["index"].tolist(),
                "id": batch["id"].tolist(),
                "source": batch["source"].tolist(),
                **columns,
                "shard": batch["shard"].tolist(),
                "stage": stage,
                "error": errors,
            },
            schema=row_schema(),
        )
