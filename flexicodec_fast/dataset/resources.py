"""The encoder actor pool's shape: filled in from what the Ray cluster holds, and checked to
fit."""

from __future__ import annotations

import logging

from ..reference.errors import InputError
from .errors import DatasetJobError

log = logging.getLogger(__name__)


def pool_shape(
    ray, local: bool, num_actors, gpus_per_actor, cpus_per_actor, decode_cpus: float
) -> tuple[int, float, float]:
    """(num_actors, gpus_per_actor, cpus_per_actor), the ones given None filled in from the
    cluster's resources. A pool that cannot fit is an error on a `local` cluster (it never
    grows) and a warning on others (an autoscaler may add nodes)."""
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus > 0 else 0.0
    if num_actors is None:
        num_actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor > 0 else 1
    if cpus_per_actor is None:
        # GPU actors only feed the GPU; CPU actors share what decoding leaves.
        cpus_per_actor = 1.0 if gpus_per_actor > 0 else max(0.1, (cpus - decode_cpus) / num_actors)
    if num_actors < 1 or gpus_per_actor < 0 or cpus_per_actor <= 0 or decode_cpus <= 0:
        raise InputError(
            f"expected num_actors >= 1, gpus_per_actor >= 0, cpus_per_actor > 0 and "
            f"decode_cpus > 0, got {num_actors}, {gpus_per_actor}, {cpus_per_actor}, "
            f"{decode_cpus}"
        )
    need_cpus = num_actors * cpus_per_actor + decode_cpus
    need_gpus = num_actors * gpus_per_actor
    if need_cpus > cpus + 1e-9 or need_gpus > gpus + 1e-9:
        message = (
            f"{num_actors} actor(s) x ({cpus_per_actor:g} CPU, {gpus_per_actor:g} GPU) plus "
            f"{decode_cpus:g} CPU for decoding need {need_cpus:g} CPU and {need_gpus:g} GPU; "
            f"the cluster has {cpus:g} CPU and {gpus:g} GPU"
        )
        if local:
            # A local cluster never grows: Ray would wait forever.
            raise DatasetJobError(
                message + "; lower num_actors, cpus_per_actor or decode_cpus, or give "
                "num_cpus (logical CPUs may exceed the cores)"
            )
        log.warning("%s; waiting for the autoscaler to add nodes", message)
    return num_actors, float(gpus_per_actor), float(cpus_per_actor)
