"""Counting host syncs without a GPU (design §5.6).

On a GPU, reading a tensor's value on the host (`.item()`, `int(t)`, `bool(t)`, `if t:`,
`torch.nonzero`, a data-dependent shape) waits for the stream to drain and makes CUDA-graph
capture impossible. The same calls dispatch the same aten ops on a CPU, so a
`TorchDispatchMode` that counts them shows, here, which code would stall a GPU.
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset(
    {
        "aten::_local_scalar_dense",
        "aten::item",
        "aten::is_nonzero",
        "aten::nonzero",
        "aten::nonzero_static",
        "aten::masked_select",
        "aten::unique_consecutive",
        "aten::_unique2",
        "aten::repeat_interleave",
    }
)


# Source folders of the three import packages (installed editable or not).
OUR_FOLDERS = ("/flexicodec_fast/", "/kernels/", "/reference/")


class HostSyncCounter(TorchDispatchMode):
    """Counts the aten ops in `SYNC_OPS` dispatched inside the `with` block, and calls of
    `Tensor.tolist` (which reads memory without dispatching an op, so a mode cannot see it;
    on a GPU it copies to the host and waits).

    `counts`: op name -> calls; `sites`: where they came from (the innermost frame of this
    package's code), when `record_sites` is set.
    """

    def __init__(self, record_sites: bool = False):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()
        self.record_sites = record_sites

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(tensor):
            counter._count("Tensor.tolist")
            return counter._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def _count(self, name: str) -> None:
        self.counts[name] += 1
        if self.record_sites:
            self.sites[self._site()] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNC_OPS:
            self._count(name)
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _site() -> str:
        for frame in reversed(traceback.extract_stack()):
            ours = any(part in frame.filename for part in OUR_FOLDERS)
            if ours and "host_syncs" not in frame.filename:
                return f"{frame.filename}:{frame.lineno} {frame.name}"
        return "?"
