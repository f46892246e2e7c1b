"""Building the token pool holds no second full copy of the tokens in host memory (issue 19, item 5).

tracemalloc sees numpy's allocations (the temporaries a build makes) but not torch's (the pool itself), so
its peak is the extra memory a build needs beside the pool: one chunk of rows, not the whole pool twice
as a concatenation followed by an `astype` did.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.data import loader
from jowa.data.loader import SegmentPool
from jowa.data.store import TrainingStore
from jowa.data.token_stores import write_token_store
from jowa.train.tokenize import load_tokens

STEPS = 200_000  # per store; two stores: 28.8 MB of int16 tokens in the pool


def test_building_the_pool_needs_one_chunk_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "FILL_ROWS", 1 << 16)
    written = [write_token_store(tmp_path / f"store{i}", STEPS, i) for i in range(2)]
    stores = [TrainingStore.open(path) for path, _ in written]
    tokens = [load_tokens(path, store) for (_, path), store in zip(written, stores, strict=True)]
    tracemalloc.start()
    try:
        pool = SegmentPool(stores, tokens, length=8, stride=4, device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pool_token_bytes = pool.tokens.numel() * pool.tokens.element_size()
    chunk_bytes = (1 << 16) * 36 * 2
    assert peak < min(2 * chunk_bytes, pool_token_bytes / 4), (peak, chunk_bytes, pool_token_bytes)
    # ... and the pool holds exactly what a plain concatenation would.
    np.testing.assert_array_equal(pool.tokens.numpy(), np.concatenate(tokens).astype(np.int16))
    np.testing.assert_array_equal(pool.actions.numpy(), np.concatenate([s.actions for s in stores]))
    np.testing.assert_array_equal(pool.terminals.numpy(), np.concatenate([s.terminals for s in stores]) > 0)
    segments = [s.segments(8, 4) for s in stores]
    np.testing.assert_array_equal(
        pool.starts.numpy(), np.concatenate([segments[0][:, 0], segments[1][:, 0] + STEPS])
    )
    np.testing.assert_array_equal(pool.valid.numpy(), np.concatenate([s[:, 1] for s in segments]))
    assert pool.tasks.tolist() == [
        s.meta["task_id"] for s, seg in zip(stores, segments, strict=True) for _ in seg
    ]
    assert pool.batch(torch.tensor([0, len(pool) - 1])).obs_tokens.shape == (2, 8, 36)
