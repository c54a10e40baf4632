"""The output folder of a corpus job: atomic shard commits with their errors, stale files of
an interrupted run, and the driver's collector that commits a shard once all its rows are
in."""

from __future__ import annotations

import json
import logging
import re

from ..options import EncodeOptions
from .columns import ERROR_COLUMNS, PART_COLUMNS, row_schema
from .errors import DatasetJobError, require
from .plan import PLAN_FILE, PLAN_FORMAT, PLAN_VERSION, Plan
from .storage import filesystem, join_uri

log = logging.getLogger(__name__)

ERRORS_DIR = "errors"
SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


class OutputFolder:
    """The output folder (local or URI): plan, atomic shard commits, errors, stale files."""

    def __init__(self, out: str):
        self.uri = out
        self.fs, self.base = filesystem(out)

    def create(self) -> None:
        self.fs.create_dir(self.path(ERRORS_DIR), recursive=True)

    def path(self, *names: str) -> str:
        return "/".join([self.base.rstrip("/"), *names])

    def committed(self) -> set[int]:
        import pyarrow.fs as pafs

        done = set()
        for f in self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True)):
            m = SHARD_PATTERN.match(f.base_name)
            if m and f.type == pafs.FileType.File:
                done.add(int(m.group(1)))
        return done

    def remove_stale(self, pending: list[int]) -> None:
        """Drop temporaries of an interrupted run and the errors of shards to be redone (a
        shard's errors are only meaningful next to its committed part file)."""
        import pyarrow.fs as pafs

        for folder in (self.base, self.path(ERRORS_DIR)):
            for f in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                name = f.base_name
                if name == PLAN_FILE + ".tmp" or (
                    name.startswith("part-") and name.endswith(".parquet.tmp")
                ):
                    self.fs.delete_file(f.path)
        for shard in pending:
            self._delete(self.path(ERRORS_DIR, shard_name(shard)))

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_file(path)

    def read_plan(self) -> dict | None:
        path = self.path(PLAN_FILE)
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def write_plan(self, plan: dict) -> None:
        self._atomic(self.path(PLAN_FILE), lambda f: f.write(json.dumps(plan, indent=2).encode()))

    def write_table(self, path: str, table) -> None:
        import pyarrow.parquet as pq

        self._atomic(path, lambda f: pq.write_table(table, f))

    def _atomic(self, path: str, write) -> None:
        tmp = path + ".tmp"
        with self.fs.open_output_stream(tmp) as f:
            write(f)
        # A rename on local and POSIX-like filesystems (atomic); object stores copy, and the
        # final object appears whole or not at all.
        self.fs.move(tmp, path)

    def commit(self, shard: int, rows, metadata: dict) -> tuple[int, int]:
        """Write a complete shard: errors first, then the part file (the commit point), with
        `metadata` and the shard's number and quantizer count in its schema metadata.
        Returns (clips encoded, clips failed)."""
        import pyarrow.compute as pc

        rows = rows.sort_by("index")
        failed = rows.filter(pc.is_valid(rows["error"]))
        good = rows.filter(pc.is_null(rows["error"])).select(list(PART_COLUMNS))
        errors_path = self.path(ERRORS_DIR, shard_name(shard))
        if failed.num_rows:
            self.write_table(errors_path, failed.select(list(ERROR_COLUMNS)))
        else:
            self._delete(errors_path)
        meta = {**metadata, "shard": shard}
        if good.num_rows:
            # What the codes hold, which is all the model has when more (or None) was asked.
            acoustic = good["acoustic_codes"][0].as_py()
            meta["num_quantizers"] = 1 if acoustic is None else 1 + len(acoustic)
        self.write_table(
            self.path(shard_name(shard)),
            good.replace_schema_metadata({k: str(v) for k, v in meta.items() if v is not None}),
        )
        return good.num_rows, failed.num_rows


def part_files(out: str) -> list[str]:
    """The committed part files of an output folder (local paths or URIs), in shard order."""
    output = OutputFolder(out)
    prefix = out.rstrip("/") if "://" in out else output.base
    return [join_uri(prefix, shard_name(s)) for s in sorted(output.committed())]


def load_errors(out: str):
    """Every failed clip of an output folder as a pyarrow Table (index, id, source, stage,
    error), sorted by index."""
    pa = require("pyarrow")
    import pyarrow.parquet as pq

    output = OutputFolder(out)
    paths = [output.path(ERRORS_DIR, shard_name(s)) for s in sorted(output.committed())]
    tables = [pq.read_table(p, filesystem=output.fs) for p in paths if output.exists(p)]
    if not tables:
        schema = row_schema()
        return pa.schema([schema.field(c) for c in ERROR_COLUMNS]).empty_table()
    return pa.concat_tables(tables).sort_by("index")


class ShardCollector:
    """Driver side: gathers the encoder rows of each pending shard and commits the shard once
    every one of its clips is in (rows are small: codes, not audio). `report` (a
    `job.DatasetReport`) counts what is committed."""

    def __init__(
        self,
        plan: Plan,
        pending: list[int],
        output_dir: OutputFolder,
        record: dict,
        options: EncodeOptions,
        report,
    ):
        from .. import __version__

        self.expected = {s: len(plan.shard_range(s)) for s in pending}
        self.buffers: dict[int, list] = {s: [] for s in pending}
        self.seen: dict[int, set] = {s: set() for s in pending}
        self.output_dir, self.record, self.report = output_dir, record, report
        self.metadata = {
            "format": PLAN_FORMAT,
            "format_version": PLAN_VERSION,
            "sample_rate": 16000,
            "num_quantizers": options.num_quantizers,
            "package_version": __version__,
        }

    def add(self, table) -> int:
        """Take a batch of encoder rows; returns how many new clips it held."""
        import pyarrow as pa
        import pyarrow.compute as pc

        added = 0
        for shard in sorted(set(table["shard"].to_pylist())):
            part = table.filter(pc.equal(table["shard"], shard))
            # Ray may re-run a task after a worker failure; rows are deterministic, so a
            # repeated row is dropped.
            fresh = [i not in self.seen[shard] for i in part["index"].to_pylist()]
            part = part.filter(pa.array(fresh))
            self.seen[shard].update(part["index"].to_pylist())
            self.buffers[shard].append(part)
            added += part.num_rows
            if len(self.seen[shard]) == self.expected[shard]:
                self._commit(shard, pa.concat_tables(self.buffers.pop(shard)))
        return added

    def _commit(self, shard: int, rows) -> None:
        import pyarrow.compute as pc

        check_fingerprint(rows, self.record, self.output_dir)
        self.metadata["model_fingerprint"] = self.record.get("model_fingerprint")
        good, failed = self.output_dir.commit(shard, rows, self.metadata)
        self.report.shards_written += 1
        self.report.files_encoded += good
        self.report.files_failed += failed
        self.report.audio_seconds += (pc.sum(rows["audio_samples"]).as_py() or 0) / 16000
        log.info("committed %s: %d clips, %d failed", shard_name(shard), good, failed)


def check_fingerprint(rows, record: dict, output_dir: OutputFolder) -> None:
    """Every clip of one output folder comes from one model: the first committed shard fixes
    the fingerprint in the plan, and a different one (say, nodes holding different checkpoint
    files under one path) stops the job before it is written."""
    found = {f for f in rows["model_fingerprint"].to_pylist() if f is not None}
    expected = record.get("model_fingerprint")
    if expected is None and len(found) == 1:
        record["model_fingerprint"] = expected = found.pop()
        output_dir.write_plan(record)
    if found - {expected}:
        raise DatasetJobError(
            f"{output_dir.uri}: clips were encoded by models {sorted(found)}, but this folder "
            f"holds codes of model {expected}; encode with that model (on a cluster: the same "
            "model files on every node) or into a new output folder"
        )
