"""One interface over both raw layouts, so stores are built by the same code whatever the source.

`open_run` looks at the directory: DQN-Replay checkpoint files (`*_ckpt.N.gz`, from the Dopamine bucket,
a mirror or `generate`) or RL Unplugged shards (`run_R-NNNNN-of-MMMMM`). Both give episodes on one time
axis with their checkpoint index as `position`, and extract rows and frames of chosen episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jowa.data.dopamine.extract import extract_frames, extract_rows, files_holding
from jowa.data.dopamine.replay import RunIndex, index_run
from jowa.data.episodes import Episode, EpisodeArrays, FrameSink
from jowa.data.rlu.run import index_rlu_run, is_rlu_run

__all__ = ["DopamineRun", "Run", "open_run"]


class Run(Protocol):
    """What building a store needs from a raw run."""

    replay_dir: Path
    layout: str  # recorded in each store's meta.json
    episodes: list[Episode]
    gaps: list[tuple[int, int]]

    @property
    def num_checkpoints(self) -> int: ...

    def whole_episodes(self) -> list[Episode]: ...

    def action_outside(self, num_actions: int) -> tuple[str, int] | None:
        """(where, action) of the first action outside [0, num_actions), found without reading frames."""
        ...

    def bytes_to_read(self, episodes: Sequence[Episode]) -> int: ...

    def extract(
        self,
        episodes: Sequence[Episode],
        sink: FrameSink,
        *,
        dest_start: int = 0,
        on_bytes: Callable[[int], None] | None = None,
    ) -> EpisodeArrays: ...


@dataclass
class DopamineRun:
    """A DQN-Replay run through `jowa.data.dopamine.replay` and `jowa.data.dopamine.extract`."""

    index: RunIndex
    layout: str = "dqn-replay"

    @property
    def replay_dir(self) -> Path:
        return self.index.replay_dir

    @property
    def episodes(self) -> list[Episode]:
        return self.index.episodes

    @property
    def gaps(self) -> list[tuple[int, int]]:
        return self.index.gaps

    @property
    def num_checkpoints(self) -> int:
        return self.index.num_files

    def whole_episodes(self) -> list[Episode]:
        return self.index.whole_episodes()

    def action_outside(self, num_actions: int) -> tuple[str, int] | None:
        return self.index.action_outside(num_actions)

    def bytes_to_read(self, episodes: Sequence[Episode]) -> int:
        """Inflated observation bytes, at most (a file is read only up to its last wanted row)."""
        return len(files_holding(self.index, episodes)) * 84 * 84 * self.index.capacity

    def extract(
        self,
        episodes: Sequence[Episode],
        sink: FrameSink,
        *,
        dest_start: int = 0,
        on_bytes: Callable[[int], None] | None = None,
    ) -> EpisodeArrays:
        rows = extract_rows(self.index, episodes)
        extract_frames(self.index, episodes, sink, dest_start=dest_start, on_bytes=on_bytes)
        return rows


def open_run(replay_dir: Path | str) -> Run:
    """Index the run in `replay_dir`, whichever layout it has."""
    replay_dir = Path(replay_dir)
    if is_rlu_run(replay_dir):
        return index_rlu_run(replay_dir)
    return DopamineRun(index_run(replay_dir))
