"""Training stores: the per-game arrays every later stage reads. This module alone reads and writes them.

A store is a directory of plain `.npy` files (memory-mappable, no HDF5 lock or chunk cache in the way):

    frames.npy          uint8   [N, 84, 84]   one preprocessed frame per step (no stacking)
    actions.npy         uint8   [N]           18-way full ALE action index
    rewards.npy         float32 [N]           clipped to [-1, 1]
    terminals.npy       uint8   [N]           1 on the last step of each (whole) episode
    episode_starts.npy  int64   [E + 1]       episode e is rows [starts[e], starts[e + 1])
    meta.json                                 game, task id, runs, seeds, counts, source hashes

Training segments are not stored: each phase computes them at load time with its own length and stride
(`TrainingStore.segments`), so changing a stride never rebuilds a store. Segments follow the reference's
right padding: in each episode one starts every `stride` steps, and one whose window runs past the
episode's end keeps only its valid steps (`segment_mask`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jowa.core.atomic import atomic_dir
from jowa.core.errors import JowaError, MissingInputError

FORMAT_VERSION = 2
FRAME_SHAPE = (84, 84)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1]
ARRAY_FILES = ("frames", "actions", "rewards", "terminals", "episode_starts")


class StoreError(JowaError, ValueError):
    """A training store is of another format version or its arrays disagree."""


def segment_index(episode_starts: np.ndarray, length: int, stride: int) -> np.ndarray:
    """(first row, valid steps) of every segment: one starts every `stride` steps inside each episode."""
    if length < 1 or stride < 1:
        raise ValueError(f"segment length and stride must be positive, got {length} and {stride}")
    starts = np.asarray(episode_starts, dtype=np.int64)
    lengths = np.diff(starts)
    per_episode = -(-lengths // stride)  # ceil
    episode = np.repeat(np.arange(len(lengths)), per_episode)
    first_of_episode = np.cumsum(per_episode) - per_episode
    offsets = (np.arange(len(episode)) - first_of_episode[episode]) * stride
    valid = np.minimum(length, lengths[episode] - offsets)
    return np.stack([starts[:-1][episode] + offsets, valid], axis=1)


def segment_mask(valid_steps: np.ndarray, length: int) -> np.ndarray:
    """Boolean [S, length] mask: True on real steps, False on right padding."""
    return np.arange(length)[None, :] < np.asarray(valid_steps)[:, None]


@dataclass(frozen=True)
class TrainingStore:
    """A store opened for reading; every array is memory-mapped."""

    path: Path
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    episode_starts: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> TrainingStore:
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise MissingInputError(f"{path}: not a training store (no meta.json); run `jowa data subsample`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{meta_path}: store format {meta.get('format_version')}, expected {FORMAT_VERSION}; "
                "delete the store and build it again"
            )
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAY_FILES}
        store = cls(path=path, meta=meta, **arrays)
        rows = {name: len(arrays[name]) for name in ARRAY_FILES if name != "episode_starts"}
        if len(set(rows.values())) != 1 or int(store.episode_starts[-1]) != len(store.actions):
            raise StoreError(
                f"{path}: arrays disagree on the number of steps ({rows}, episodes end at "
                f"{int(store.episode_starts[-1])})"
            )
        return store

    def __len__(self) -> int:
        return len(self.actions)

    def segments(self, length: int, stride: int) -> np.ndarray:
        """(first row, valid steps) of the segments a phase trains on; see `segment_index`."""
        return segment_index(self.episode_starts, length, stride)


class StoreWriter:
    """Fills the arrays of a store being built in a temporary directory (see `write_store`)."""

    def __init__(self, directory: Path, transitions: int) -> None:
        self.directory = directory
        self.transitions = transitions
        self.meta: dict[str, Any] | None = None
        frames = np.lib.format.open_memmap(
            directory / "frames.npy", mode="w+", dtype=np.uint8, shape=(transitions, *FRAME_SHAPE)
        )
        self._frames_offset = frames.offset
        del frames
        self._fd = os.open(directory / "frames.npy", os.O_WRONLY)

    def write_frames(self, block: np.ndarray, dest: int) -> None:
        """Frames for rows [dest, dest + len(block)); positioned writes go through the page cache, not RSS."""
        view = memoryview(np.ascontiguousarray(block, dtype=np.uint8)).cast("B")
        os.pwrite(self._fd, view, self._frames_offset + dest * FRAME_BYTES)

    def finish(
        self,
        *,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        episode_starts: np.ndarray,
        meta: dict[str, Any],
    ) -> dict[str, Any]:
        """Write the per-step arrays and meta.json; return the final metadata."""
        lengths = {len(actions), len(rewards), len(terminals), int(episode_starts[-1]), self.transitions}
        if len(lengths) != 1:
            raise ValueError(f"store arrays disagree on the number of steps: {sorted(lengths)}")
        np.save(self.directory / "actions.npy", np.asarray(actions, dtype=np.uint8))
        np.save(self.directory / "rewards.npy", np.asarray(rewards, dtype=np.float32))
        np.save(self.directory / "terminals.npy", np.asarray(terminals, dtype=np.uint8))
        np.save(self.directory / "episode_starts.npy", np.asarray(episode_starts, dtype=np.int64))
        self.meta = {
            "format_version": FORMAT_VERSION,
            **meta,
            "transitions": self.transitions,
            "episodes": len(episode_starts) - 1,
        }
        (self.directory / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        return self.meta

    def close(self) -> None:
        os.close(self._fd)


@contextmanager
def write_store(out: Path | str, transitions: int, *, overwrite: bool = False) -> Iterator[StoreWriter]:
    """Build a store of `transitions` steps at `out`; it appears only once `finish` ran.

    An existing store is refused unless `overwrite` (the policy of `jowa.core.atomic`).
    """
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = StoreWriter(tmp, transitions)
        try:
            yield writer
        finally:
            writer.close()
        if writer.meta is None:
            raise RuntimeError(f"{out}: the store's arrays were never written (StoreWriter.finish)")
