"""What both source formats give the data stages: episodes of a run, their per-row arrays, frames.

Dopamine's replay files (`jowa.data.dopamine.replay`, `jowa.data.dopamine.extract`) and RL Unplugged's
TFRecords
(`jowa.data.rlu.run`) each index a run into `Episode`s on one time axis and extract their rows into
`EpisodeArrays` and their frames into a `FrameSink`; a damaged file of either is a `ReplayFormatError`.
Kept apart from both so that neither format imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from jowa.core.errors import JowaError


class ReplayFormatError(JowaError, ValueError):
    """A replay file is missing, truncated, corrupt or has an unexpected header."""


@dataclass(frozen=True)
class Episode:
    """Consecutive global rows `[start_row, start_row + length)` of one run, padding excluded."""

    start_row: int
    length: int
    truncated: bool  # cut by a gap or by the end of the run: not known to be a whole episode
    position: int  # position of the file holding the first step
    after_gap: bool = False  # starts right after rows no file holds


@dataclass
class EpisodeArrays:
    """Per-row arrays of a list of episodes, concatenated in the given episode order."""

    actions: np.ndarray  # int32, index into the game's minimal action set (as stored)
    rewards: np.ndarray  # float32
    terminals: np.ndarray  # uint8


FrameSink = Callable[[np.ndarray, int], None]  # (frames block, first destination row)
