"""Frames for the tokenizer: drawn uniformly from every store's steps pooled, read from memory maps.

At paper scale the stores hold ~150M frames (~1 TB), so frames are never loaded whole: each step's rows
are drawn from (seed, step), sorted, read from the memory-mapped stores, and the next step's read runs
in a background thread while the current step computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from jowa.data.store import TrainingStore
from jowa.train.run import local_draw
from jowa.train.runtime import Runtime


class FrameSampler:
    """This rank's share of each step's uniformly drawn frames, as float tensors in [0, 1] (B, 1, 84, 84)."""

    def __init__(self, stores: Sequence[TrainingStore], rt: Runtime, *, batch: int, seed: int) -> None:
        self.stores = list(stores)
        self.offsets = np.cumsum([0] + [len(store) for store in self.stores])
        self.rt = rt
        self.batch = batch
        self.seed = seed
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: dict[int, Future[torch.Tensor]] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, step: int) -> np.ndarray:
        """This rank's global rows of step `step` (every rank draws the same batch and takes its slice)."""
        return local_draw(len(self), self.batch, self.seed, step, self.rt).numpy()

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 frames of global `rows`, in the given order, from the memory maps."""
        out = np.empty((len(rows), 84, 84), dtype=np.uint8)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s, store in enumerate(self.stores):
            picked = np.flatnonzero(which == s)
            if len(picked):
                local = rows[picked] - self.offsets[s]
                order = np.argsort(local, kind="stable")
                out[picked[order]] = store.frames[local[order]]
        frames = torch.from_numpy(out)
        return frames.pin_memory() if self.rt.on_gpu else frames

    def frames(self, step: int) -> torch.Tensor:
        """Step `step`'s frames on the device; starts reading step + 1's."""
        future = self._pending.pop(step, None)
        host = future.result() if future is not None else self.read(self.rows(step))
        self._pending = {step + 1: self._pool.submit(lambda: self.read(self.rows(step + 1)))}
        frames = host.to(self.rt.device, non_blocking=True)
        return frames.unsqueeze(1).float().div_(255)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
