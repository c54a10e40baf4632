"""The shard assignment of a listing and the plan file (`_plan.json`) that binds an output
folder to one listing and one set of settings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..options import EncodeOptions
from .errors import DatasetJobError

PLAN_FILE = "_plan.json"
PLAN_FORMAT = "flexicodec-fast-dataset"
PLAN_VERSION = "1"
# Settings that plans written before they were `EncodeOptions` fields do not record: those
# runs encoded with exact attention and no dither.
UNRECORDED_SETTINGS = {"attention_window": None, "dither": 0.0}
# What a rerun must share with the plan. The model spec is recorded but not compared: moved
# checkpoint files still resume, and a different model is caught by its fingerprint before
# any shard is written.
BINDING_KEYS = ("format_version", "num_files", "files_digest", "shard_size", "options")


@dataclass
class Plan:
    """The deterministic shard assignment of a sorted listing: shard `k` holds items
    `[k*shard_size, (k+1)*shard_size)`."""

    ids: list[str]
    uris: list[str]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.ids) // self.shard_size)

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min(len(self.ids), (shard + 1) * self.shard_size))

    def digest(self) -> str:
        """Of the ids only: the same corpus mounted elsewhere resumes."""
        h = hashlib.sha256()
        for i in self.ids:
            h.update(f"{i}\n".encode())
        return h.hexdigest()[:32]


def plan_record(plan: Plan, spec: dict, options: EncodeOptions) -> dict:
    """What `_plan.json` holds for this run (the model fingerprint joins it once the first
    shard is in)."""
    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_VERSION,
        "num_files": len(plan.ids),
        "files_digest": plan.digest(),
        "shard_size": plan.shard_size,
        "num_shards": plan.num_shards,
        "model_spec": spec,
        "options": options.settings(),
    }


def check_plan(existing: dict | None, plan: dict, out: str) -> dict:
    """The plan to write: `plan`, keeping the fingerprint of an `existing` one that it
    matches; an existing plan of another listing or other settings is refused."""
    if existing is None:
        return plan
    if existing.get("format") != PLAN_FORMAT:
        raise DatasetJobError(f"{out}: {PLAN_FILE} is not a {PLAN_FORMAT} plan")
    recorded = existing.get("options")
    if isinstance(recorded, dict):
        existing = {**existing, "options": {**UNRECORDED_SETTINGS, **recorded}}
    differ = [k for k in BINDING_KEYS if existing.get(k) != plan[k]]
    if differ:
        detail = "; ".join(f"{k}: {existing.get(k)!r} there, {plan[k]!r} now" for k in differ)
        raise DatasetJobError(
            f"{out} holds shards made from another listing or with other settings ({detail}); "
            "rerun with the same source and settings, or use a new output folder"
        )
    return {**plan, **{k: v for k, v in existing.items() if k == "model_fingerprint"}}
