"""The Ray actor that encodes: one model per actor, loaded once, encoding buckets of decoded
clips into rows of `columns.row_schema()`."""

from __future__ import annotations

import numpy as np
import torch

from ..options import EncodeOptions
from .columns import CODES_COLUMNS, row_schema
from .encode import encode_clips, length_buckets
from .model_spec import load_model_spec


class Encoder:
    """Actor: one model, loaded once; encodes buckets of decoded clips."""

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
        self.model = load_model_spec(model_spec, "cuda" if use_gpu else "cpu")
        # Resolved once here, so an actor warns once when asked for more quantizers than
        # the model has.
        self.options = options.for_model(self.model)
        self.batch_size = batch_size
        self.max_batch_samples = max_batch_samples

    def __call__(self, batch: dict):
        """A bucket of `decode.decode_chunk` rows -> a pyarrow Table of `row_schema()`:
        codes for the clips that encode, stage and error for the others."""
        import pyarrow as pa

        n = len(batch["index"])
        columns = {key: [None] * n for key in CODES_COLUMNS}
        stage = ["decode" if batch["error"][i] else None for i in range(n)]
        errors = [batch["error"][i] or None for i in range(n)]
        good = [i for i in range(n) if not errors[i]]
        lengths = [len(batch["audio"][i]) for i in good]
        for bucket in length_buckets(lengths, self.batch_size, self.max_batch_samples):
            items = [good[j] for j in bucket]
            self._encode(batch, items, columns, stage, errors)
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

    def _encode(self, batch, items, columns, stage, errors):
        # A copy: the batch is a read-only view into the object store.
        clips = [torch.from_numpy(np.array(batch["audio"][i], dtype=np.float32)) for i in items]
        try:
            result = encode_clips(self.model, clips, self.options)
        except Exception as e:  # noqa: BLE001 - isolate the failing clip(s) below
            if len(items) == 1:
                stage[items[0]], errors[items[0]] = "encode", f"{type(e).__name__}: {e}"
                return
            # A batch failure (one bad clip, or out of memory) is retried clip by clip, so
            # only the clips that fail alone are recorded as errors.
            for i in items:
                self._encode(batch, [i], columns, stage, errors)
            return
        for key, values in result.items():
            for i, value in zip(items, values, strict=True):
                columns[key][i] = value
