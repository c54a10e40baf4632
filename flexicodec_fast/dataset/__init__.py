"""Corpus-scale encoding on Ray Data, one module per concern; `flexicodec_fast.distributed` is
the public entry (`encode_dataset`, `flexicodec-fast encode-dataset`) and describes the
pipeline.

- `errors`: the job's error type, the `[ray]` extra's imports, argument checks;
- `storage`: local paths and URIs through one pyarrow filesystem;
- `sources`: the id-sorted listing of a folder, manifest or list of files;
- `model_spec`: the model description every actor loads on its own;
- `plan`: the fixed shard assignment and the plan file a rerun must match;
- `decode`: files -> 16 kHz mono clips (the CPU tasks);
- `columns`: the code columns of a part-file row, and rows back to codes;
- `encode`: clips -> code rows through an `Engine` (the one model call);
- `actor`: the Ray actor that holds one model and its `Engine`;
- `shards`: the output folder: atomic shard commits, errors, the driver's collector;
- `resources`: the actor pool's shape from the cluster;
- `job`: `encode_dataset`, which runs the pipeline;
- `cli`: the `encode-dataset` subcommand.
"""
