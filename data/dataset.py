"""PyTorch dataset over the committed records of an interaction log (read-only).

Each item is a dict of tensors (H x W = the log's image size):

| key    | shape      | dtype   | content                                                 |
| ------ | ---------- | ------- | ------------------------------------------------------- |
| rgb    | (3, H, W)  | float32 | rgb_before scaled to [0, 1]                             |
| depth  | (1, H, W)  | float32 | depth_before in metres (mm-quantised), 0 = missing      |
| K      | (3, 3)     | float32 | intrinsics in pixels                                    |
| pixel  | (2,)       | float32 | (u, v) action pixel                                     |
| mask   | (1, H, W)  | float32 | extracted mask in {0, 1}, before frame                  |
| label  | ()         | int64   | `Label` value                                           |
| index  | ()         | int64   | record index in the log                                 |

The dataset sees the records committed when it was built or last `refresh()`ed; the writer may keep
appending meanwhile. It opens the log lazily per process, so it works with DataLoader workers
(fork or spawn).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.log import InteractionLog
from data.schema import Label

_FIELDS = ("rgb_before", "depth_before", "K", "pixel", "mask", "label")


class InteractionDataset(Dataset):
    """Committed records of the log at `log_path`, optionally only those with the given label(s).

    labels: None (all), one `Label`/int, or an iterable of them.
    transform: optional callable applied to each item dict (e.g. augmentation).
    """

    def __init__(
        self,
        log_path: str | os.PathLike,
        labels: Label | int | Iterable[Label | int] | None = None,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, Any]] | None = None,
    ) -> None:
        self.log_path = Path(log_path)
        if labels is None:
            self.labels: frozenset[int] | None = None
        else:
            items = [labels] if isinstance(labels, (int, np.integer)) else list(labels)
            self.labels = frozenset(int(Label(int(x))) for x in items)
        self.transform = transform
        self._log: InteractionLog | None = None
        self._pid: int | None = None
        self._indices = np.zeros(0, dtype=np.int64)
        self._scanned = 0
        self.refresh()

    def _get_log(self) -> InteractionLog:
        if self._log is None or self._pid != os.getpid():
            self._log = InteractionLog.open(self.log_path, mode="r")
            self._pid = os.getpid()
        return self._log

    def refresh(self) -> int:
        """Pick up records committed since the last refresh; return the new length."""
        log = self._get_log()
        n = log.refresh()
        if n > self._scanned:
            new = np.arange(self._scanned, n, dtype=np.int64)
            if self.labels is not None:
                lab = log.read_field("label", slice(self._scanned, n))
                new = new[np.isin(lab, sorted(self.labels))]
            self._indices = np.concatenate([self._indices, new])
            self._scanned = n
        return len(self._indices)

    @property
    def indices(self) -> np.ndarray:
        """Log indices of the records this dataset exposes, in order."""
        return self._indices.copy()

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self._indices[k])  # IndexError past the end, negative k allowed
        f = self._get_log().read_fields(_FIELDS, i)
        item = {
            "rgb": torch.from_numpy(np.ascontiguousarray(f["rgb_before"].transpose(2, 0, 1)))
            .float()
            .div_(255.0),
            "depth": torch.from_numpy(np.ascontiguousarray(f["depth_before"], dtype=np.float32))[None],
            "K": torch.from_numpy(np.asarray(f["K"], dtype=np.float32)),
            "pixel": torch.from_numpy(np.asarray(f["pixel"], dtype=np.float32)),
            "mask": torch.from_numpy(np.asarray(f["mask"], dtype=np.float32))[None],
            "label": torch.tensor(int(f["label"]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_log"] = None  # reopened lazily in the worker process
        state["_pid"] = None
        return state

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
