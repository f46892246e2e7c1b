"""Training stores: the per-game arrays that every later stage reads.

A store is a directory of plain `.npy` files (memory-mappable, no HDF5 lock or chunk cache in the way):

    frames.npy          uint8   [N, 84, 84]   one preprocessed frame per step (no stacking)
    actions.npy         uint8   [N]           18-way full ALE action index
    rewards.npy         float32 [N]           clipped to [-1, 1]
    terminals.npy       uint8   [N]           1 on the last step of each (whole) episode
    episode_starts.npy  int64   [E + 1]       episode e is rows [starts[e], starts[e + 1])
    segments.npy        int64   [S, 2]        (first row, valid steps) of each training segment
    meta.json                                 game, task id, runs, seeds, counts, source hashes

Segments follow the reference's right padding: in each episode a segment starts every `stride` steps,
and one whose window runs past the episode's end keeps only its valid steps (`segment_mask`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
ARRAY_FILES = ("frames", "actions", "rewards", "terminals", "episode_starts", "segments")


def segment_index(episode_starts: np.ndarray, length: int, stride: int) -> np.ndarray:
    """(first row, valid steps) of every segment: starts every `stride` steps inside each episode."""
    parts = []
    for begin, end in zip(episode_starts[:-1], episode_starts[1:], strict=True):
        offsets = np.arange(0, end - begin, stride, dtype=np.int64)
        parts.append(np.stack([begin + offsets, np.minimum(length, end - begin - offsets)], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def segment_mask(valid_steps: np.ndarray, length: int) -> np.ndarray:
    """Boolean [S, length] mask: True on real steps, False on right padding."""
    return np.arange(length)[None, :] < np.asarray(valid_steps)[:, None]


@dataclass
class TrainingStore:
    """A store opened for reading; frames are memory-mapped."""

    path: Path
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    episode_starts: np.ndarray
    segments: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> TrainingStore:
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{path}: not a training store (no meta.json); run `jowa data subsample` first"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: store format {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in ARRAY_FILES}
        return cls(path=path, meta=meta, **arrays)

    def __len__(self) -> int:
        return len(self.actions)


def write_arrays(
    tmp: Path,
    *,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    episode_starts: np.ndarray,
    segment_length: int,
    segment_stride: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write everything but the frames (written by the extractor) and return the final metadata."""
    segments = segment_index(episode_starts, segment_length, segment_stride)
    np.save(tmp / "actions.npy", actions.astype(np.uint8))
    np.save(tmp / "rewards.npy", rewards.astype(np.float32))
    np.save(tmp / "terminals.npy", terminals.astype(np.uint8))
    np.save(tmp / "episode_starts.npy", episode_starts.astype(np.int64))
    np.save(tmp / "segments.npy", segments)
    meta = {
        "format_version": FORMAT_VERSION,
        **meta,
        "transitions": int(len(actions)),
        "episodes": int(len(episode_starts) - 1),
        "segments": int(len(segments)),
        "segment_length": segment_length,
        "segment_stride": segment_stride,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta
