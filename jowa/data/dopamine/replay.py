"""Rebuild a DQN-Replay run in time order and find its episodes, reading each small file once.

A run is a sequence of circular-buffer snapshots (see docs: dqn-replay-format §1.5–1.7). `index_run`
reads each file's small per-row arrays (action, reward, terminal) once, places the file on the run's
global row axis (`jowa.data.dopamine.placement`), cuts its new rows into episodes (padding after
terminals, gaps, the run's end; rows no file holds that are only padding are no gap) and keeps those
rows in time order, compactly: actions as uint8 and rewards as int8 (as float32 if a file holds other
values than -1, 0 and 1), about 2 bytes per row, plus one row number per terminal.
`jowa.data.dopamine.extract` takes per-row arrays from there and inflates only observation files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jowa.data.dopamine.format import ALL_KINDS, STORE_SPECS, checkpoint_filename, list_suffixes, load_array
from jowa.data.dopamine.placement import PADDING_ROWS, Arrays, ReplayFile, end_row, replay_path
from jowa.data.episodes import Episode, ReplayFormatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldRows:
    """The per-row values of a file's new rows, global rows [first_row, end_row), in time order."""

    actions: np.ndarray  # uint8: an index into the game's minimal action set, as stored
    rewards: np.ndarray  # int8 when all are -1, 0 or 1 (always, in DQN-Replay), else float32


@dataclass
class RunIndex:
    """Everything about a run that the small arrays tell: files, episodes, gaps, and the per-row values."""

    replay_dir: Path
    capacity: int
    files: list[ReplayFile]
    episodes: list[Episode] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) global rows no file holds
    start_unknown: bool = False  # every log before the first file was skipped: earlier rows are unknown
    held: dict[int, HeldRows] = field(default_factory=dict)  # by file position
    terminal_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted

    @property
    def num_files(self) -> int:
        return len(self.files)

    def whole_episodes(self) -> list[Episode]:
        return [e for e in self.episodes if not e.truncated]

    def action_outside(self, num_actions: int) -> tuple[str, int] | None:
        """(where, action) of the first stored action of `num_actions` or more, or None; from the index."""
        for file in self.files:
            bad = np.flatnonzero(self.held[file.position].actions >= num_actions)
            if bad.size:
                where = f"{self.path('action', file)}: global row {file.first_row + int(bad[0])}"
                return where, int(self.held[file.position].actions[bad[0]])
        return None

    def path(self, kind: str, file: ReplayFile) -> Path:
        return replay_path(self.replay_dir, kind, file.suffix)

    def ends_in_terminal(self, episodes: Sequence[Episode]) -> np.ndarray:
        """Per episode, whether its last row is a terminal (not so for one cut by a gap or the run's end)."""
        return np.isin([e.start_row + e.length - 1 for e in episodes], self.terminal_rows)


def _check_suffixes(replay_dir: Path) -> list[int]:
    if not replay_dir.is_dir():
        raise ReplayFormatError(f"{replay_dir}: replay directory not found")
    found = list_suffixes(replay_dir)
    if not found:
        raise ReplayFormatError(f"{replay_dir}: no DQN-Replay checkpoint files (*_ckpt.N.gz)")
    for suffix, kinds in sorted(found.items()):
        missing = sorted(set(ALL_KINDS) - kinds)
        if missing:
            names = ", ".join(checkpoint_filename(k, suffix) for k in missing)
            raise ReplayFormatError(f"{replay_dir}: checkpoint {suffix} is incomplete, missing {names}")
    suffixes = sorted(found)
    absent = sorted(set(range(suffixes[0], suffixes[-1] + 1)) - set(suffixes))
    if absent:
        log.warning(
            "%s: no files for checkpoint suffixes %s; their rows are reported as gaps", replay_dir, absent
        )
    return suffixes


class _EpisodeSplitter:
    """Cuts the time-ordered row stream into episodes: padding after terminals, gaps, the run's end."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []
        self.pads_due = PADDING_ROWS  # the run starts with padding, like every episode
        self.open_start: int | None = None  # first row of the episode being read
        self.open_position = 0
        self.open_after_gap = False
        self.after_gap = False
        self.last_row = -1

    def gap(self) -> None:
        """Rows are missing: the open episode is cut, and where the next one starts is unknown."""
        self._close(self.last_row + 1, truncated=True)
        self.pads_due = 0
        self.after_gap = True

    def lost_padding(self, rows: int) -> None:
        """The next `rows` rows are in no file, but placement showed them to be padding still due."""
        self.pads_due -= rows
        self.last_row += rows

    def _close(self, stop: int, truncated: bool) -> None:
        if self.open_start is not None:
            self.episodes.append(
                Episode(
                    self.open_start,
                    stop - self.open_start,
                    truncated,
                    self.open_position,
                    self.open_after_gap,
                )
            )
        self.open_start = None

    def feed(self, path: Path, file: ReplayFile, rows: Arrays) -> None:
        """Consume this file's new rows (global rows [first_row, end_row)), given in time order."""
        start, stop = file.first_row, file.end_row
        if stop <= start:
            return
        fields = [rows["action"], rows["reward"], rows["terminal"]]
        row = start
        for t_row in [*(start + np.flatnonzero(fields[2])).tolist(), None]:
            seg_stop = stop if t_row is None else t_row + 1
            row = self._skip_padding(path, file, row, seg_stop, t_row is not None, fields, start)
            if row < seg_stop and self.open_start is None:
                self.open_start, self.open_position = row, file.position
                self.open_after_gap, self.after_gap = self.after_gap, False
            if t_row is not None:
                self._close(t_row + 1, truncated=self.open_after_gap)
                self.pads_due = PADDING_ROWS
            row = seg_stop
        self.last_row = stop - 1

    def _skip_padding(
        self,
        path: Path,
        file: ReplayFile,
        row: int,
        seg_stop: int,
        ends_in_terminal: bool,
        fields: list[np.ndarray],
        start: int,
    ) -> int:
        """Check and skip the padding rows still due at `row`; return the first row after them."""
        n = min(self.pads_due, seg_stop - row)
        if n <= 0:
            return row
        i = row - start
        bad = any(f[i : i + n].any() for f in fields[:2]) or (ends_in_terminal and n == seg_stop - row)
        if bad:
            raise ReplayFormatError(
                f"{path}: expected {PADDING_ROWS} all-zero padding rows from global row {row} "
                f"(slot {row % file.capacity}), found a non-zero action, reward or terminal"
            )
        self.pads_due -= n
        return row + n

    def finish(self) -> list[Episode]:
        self._close(self.last_row + 1, truncated=True)
        return self.episodes


def _small_arrays(replay_dir: Path, suffix: int, capacity: int | None) -> Arrays:
    """A file's action, reward and terminal arrays; the first file's length sets the run's capacity."""
    arrays = {}
    for kind in ("action", "reward", "terminal"):
        path = replay_path(replay_dir, kind, suffix)
        arrays[kind] = array = load_array(path, dtype=STORE_SPECS[kind][0])
        if array.ndim != 1 or (capacity is not None and len(array) != capacity):
            expected = f"({capacity},)" if capacity is not None else "one dimension"
            raise ReplayFormatError(f"{path}: shape {array.shape}, expected {expected}")
        capacity = len(array)
    return arrays


def _new_rows(arrays: Arrays, file: ReplayFile) -> Arrays:
    """The file's new rows in time order: at most two runs of slots, copied."""
    first, n = file.first_row % file.capacity, file.new_rows
    head = min(n, file.capacity - first)
    return {k: np.concatenate([a[first : first + head], a[: n - head]]) for k, a in arrays.items()}


def _split_new_rows(
    splitter: _EpisodeSplitter, replay_dir: Path, file: ReplayFile, arrays: Arrays
) -> tuple[HeldRows, np.ndarray]:
    """Feed the file's new rows to the splitter; return their compact values and their terminal rows."""
    rows = _new_rows(arrays, file)
    splitter.feed(replay_path(replay_dir, "terminal", file.suffix), file, rows)
    return _held_rows(replay_dir, file, rows), file.first_row + np.flatnonzero(rows["terminal"])


def _held_rows(replay_dir: Path, file: ReplayFile, rows: Arrays) -> HeldRows:
    actions, rewards = rows["action"], rows["reward"]
    bad = np.flatnonzero((actions < 0) | (actions > np.iinfo(np.uint8).max))
    if bad.size:
        raise ReplayFormatError(
            f"{replay_path(replay_dir, 'action', file.suffix)}: action {actions[bad[0]]} at global row "
            f"{file.first_row + bad[0]} is not an action index from 0 to 255 (Atari games have at most 18)"
        )
    unit = ((rewards == 0) | (np.abs(rewards) == 1)).all()
    return HeldRows(actions.astype(np.uint8), rewards.astype(np.int8) if unit else rewards)


def index_run(replay_dir: Path | str) -> RunIndex:
    """Place every file of a run in time order, list its episodes and keep its rows' values compactly.

    Each small file is inflated once; at most two files' whole arrays are held at a time (the partial
    last file is placed by comparing it with the previous one).
    """
    replay_dir = Path(replay_dir)
    suffixes = _check_suffixes(replay_dir)
    index = RunIndex(replay_dir, 0, [])
    capacity: int | None = None  # the first file's
    splitter = _EpisodeSplitter()
    terminal_rows = []
    emitted = 0  # rows [0, emitted) are accounted for (held or gap)
    previous: tuple[ReplayFile, Arrays] | None = None
    for position, suffix in enumerate(suffixes):
        arrays = _small_arrays(replay_dir, suffix, capacity)
        index.capacity = capacity = len(arrays["terminal"])
        path = replay_path(replay_dir, "add_count", suffix)
        add_count = int(load_array(path, dtype=np.int64, shape=()))
        if add_count < 0:
            raise ReplayFormatError(f"{path}: negative add_count {add_count}")
        placed = end_row(replay_dir, suffix, add_count, arrays, previous, position == len(suffixes) - 1)
        end = placed.end_row
        if end < emitted:
            raise ReplayFormatError(
                f"{path}: add_count {add_count} goes back in time (the previous file reached row {emitted})"
            )
        file = ReplayFile(suffix, position, add_count, end, max(end - capacity, emitted, 0), capacity)
        if placed.start_unknown:
            index.start_unknown = True
            log.warning(
                "%s: the first checkpoint had wrapped before any log: the run's start is unknown", path
            )
            splitter.gap()
        if file.first_row > emitted and placed.lost_only_padding:
            log.info(
                "%s: rows %d..%d are in no file (a skipped log), but they are only padding: nothing is lost",
                path,
                emitted,
                file.first_row - 1,
            )
            splitter.lost_padding(file.first_row - emitted)
        elif file.first_row > emitted:
            index.gaps.append((emitted, file.first_row))
            log.warning(
                "%s: rows %d..%d are in no file (a skipped or missing log)", path, emitted, file.first_row - 1
            )
            splitter.gap()
        index.held[position], terminals = _split_new_rows(splitter, replay_dir, file, arrays)
        terminal_rows.append(terminals)
        index.files.append(file)
        emitted, previous = end, (file, arrays)
    index.episodes = splitter.finish()
    index.terminal_rows = np.concatenate(terminal_rows)
    log.info(
        "%s: %d files, %d episodes (%d truncated), %d rows in gaps",
        replay_dir,
        len(index.files),
        len(index.episodes),
        sum(e.truncated for e in index.episodes),
        sum(b - a for a, b in index.gaps),
    )
    return index
