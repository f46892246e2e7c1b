"""The world model's data: token stores opened as one segment pool, placed where batches are cheapest.

The pool goes to the GPU when its arrays take at most half the free memory (the paper's ~150M steps x
36 int16 tokens are ~11 GB), so a batch is a few indexed reads on the device; otherwise it stays in host
memory and each batch is pinned and copied without blocking (`jowa.data.loader.fetch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jowa.data.loader import SegmentPool, fetch, pool_device
from jowa.data.store import TrainingStore
from jowa.models.batch import Batch
from jowa.models.tokenizer_config import TokenizerConfig
from jowa.train.run import local_draw
from jowa.train.runtime import Runtime, TrainingSetupError
from jowa.train.tokenize import load_tokens
from jowa.weights.state_files import read_metadata
from jowa.weights.tokenizer_checkpoints import TOKENIZER_FORMAT

# Per step besides the tokens: action (1), reward (4), terminal (1), and the segment index (8 + 8 + 8).
_STEP_OVERHEAD_BYTES = 30


def tokenizer_shape(path: Path | str) -> tuple[int, int]:
    """(vocabulary size, tokens per frame) of a tokenizer file, read from its header only."""
    config = TokenizerConfig.from_dict(read_metadata(path, expected_format=TOKENIZER_FORMAT)["config"])
    return config.vocab_size, config.tokens_per_frame


class DevicePool:
    """A SegmentPool and the run it feeds: draws each step's segments for this rank onto its device."""

    def __init__(self, pool: SegmentPool, stores: Sequence[TrainingStore], rt: Runtime) -> None:
        self.pool = pool
        self.stores = list(stores)
        self.rt = rt

    def __len__(self) -> int:
        return len(self.pool)

    def index(self, batch: int, seed: int, step: int) -> torch.Tensor:
        return local_draw(len(self.pool), batch, seed, step, self.rt)

    def draw(self, batch: int, seed: int, step: int) -> Batch:
        """This rank's share of step `step`'s `batch` segments, on the run's device."""
        return fetch(self.pool, self.index(batch, seed, step), self.rt.device)


def open_pool(
    stores: Sequence[TrainingStore], tokens: Sequence[np.ndarray], rt: Runtime, *, length: int, stride: int
) -> DevicePool:
    steps = sum(len(store) for store in stores)
    width = tokens[0].shape[1] if tokens else 0
    device = pool_device(steps * (2 * width + _STEP_OVERHEAD_BYTES), rt.device)
    pool = SegmentPool(stores, tokens, length=length, stride=stride, device=device)
    if len(pool) == 0:
        raise TrainingSetupError(f"the stores {[str(s.path) for s in stores]} hold no segments")
    return DevicePool(pool, stores, rt)


def open_token_pool(
    store_paths: Sequence[Path], token_paths: Sequence[Path], rt: Runtime, *, length: int, stride: int
) -> DevicePool:
    """The stores and their `jowa tokenize` arrays (same order) as one pool."""
    if len(store_paths) != len(token_paths):
        raise TrainingSetupError(f"{len(store_paths)} stores but {len(token_paths)} token arrays")
    stores = [TrainingStore.open(path) for path in store_paths]
    tokens = [load_tokens(path, store) for path, store in zip(token_paths, stores, strict=True)]
    return open_pool(stores, tokens, rt, length=length, stride=stride)
