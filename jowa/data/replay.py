"""Rebuild a DQN-Replay run in time order and find its episodes, streaming.

A run is a sequence of circular-buffer snapshots (see docs: dqn-replay-format §1.5–1.7). Suffix numbers
only order the files (and show which are missing); each file's `add_count` tells which global rows it
holds: a file whose buffer had seen `T` rows holds rows `[T - C, T)`, row `r` in slot `r % C`. A full
file's `T` is its `add_count`; the partial last file stores only the cursor `T % C`, and its `T` is the
first count after the previous file's that is congruent to it, or a capacity later if a log was skipped
in between. Whether one was is read from slot C-2 (see `_log_skipped`), never from how alike two files
look: zero rows (padding, or a no-op step with no reward) match by coincidence. Rows already emitted by
an earlier file (the stale tail of the partial file) are skipped; rows no file holds form a gap.

Indexing (`index_run`) reads only the small per-row arrays, so it costs a few MB per file; the frames of
a few slots are read in the rare runs whose small arrays cannot place a file. Frames are pulled later by
`jowa.data.extract`, which inflates each observation file once, in chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jowa.data.dopamine_format import (
    ALL_KINDS,
    STACK_SIZE,
    STORE_SPECS,
    NpyGzReader,
    ReplayFormatError,
    checkpoint_filename,
    list_suffixes,
    load_array,
)

log = logging.getLogger(__name__)
PADDING_ROWS = STACK_SIZE - 1


@dataclass(frozen=True)
class ReplayFile:
    """One checkpoint suffix and the global rows `[first_row, end_row)` it contributes."""

    suffix: int
    position: int  # index among the run's files, in suffix order (a time axis for data quality)
    add_count: int
    end_row: int  # rows the buffer had seen when this file was written
    first_row: int  # first row not held by an earlier file
    capacity: int

    @property
    def new_rows(self) -> int:
        return max(0, self.end_row - self.first_row)

    def slots(self, start: int, stop: int) -> np.ndarray:
        """Buffer slots of global rows [start, stop), which must lie inside this file."""
        return np.arange(start, stop, dtype=np.int64) % self.capacity


@dataclass(frozen=True)
class Episode:
    """Consecutive global rows `[start_row, start_row + length)` of one run, padding excluded."""

    start_row: int
    length: int
    truncated: bool  # cut by a gap or by the end of the run: not known to be a whole episode
    position: int  # position of the file holding the first step
    after_gap: bool = False  # starts right after rows no file holds


@dataclass
class RunIndex:
    """Everything about a run that the small arrays tell: files, episodes, gaps."""

    replay_dir: Path
    capacity: int
    files: list[ReplayFile]
    episodes: list[Episode] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) global rows no file holds
    start_unknown: bool = False  # every log before the first file was skipped: earlier rows are unknown

    @property
    def num_files(self) -> int:
        return len(self.files)

    def whole_episodes(self) -> list[Episode]:
        return [e for e in self.episodes if not e.truncated]

    def path(self, kind: str, file: ReplayFile) -> Path:
        return _path(self.replay_dir, kind, file.suffix)

    def small_arrays(self, file: ReplayFile) -> dict[str, np.ndarray]:
        """The file's action, reward and terminal arrays, whole."""
        return _small_arrays(self.replay_dir, file.suffix, file.capacity)


def _path(replay_dir: Path, kind: str, suffix: int) -> Path:
    return replay_dir / checkpoint_filename(kind, suffix)


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


def _capacity(replay_dir: Path, suffix: int) -> int:
    path = _path(replay_dir, "action", suffix)
    with NpyGzReader(path) as reader:
        if reader.dtype != STORE_SPECS["action"][0] or len(reader.shape) != 1:
            raise ReplayFormatError(f"{path}: expected a 1-d int32 array, got {reader.shape} {reader.dtype}")
        return reader.shape[0]


def _plan_files(
    replay_dir: Path, suffixes: Sequence[int], capacity: int
) -> tuple[list[ReplayFile], list, bool]:
    """Place every file on the global row axis from its add_count; find gaps and duplicates.

    Also says whether the run's start is unknown: the first file is partial yet had wrapped, so every
    earlier log was skipped and how many rows came before cannot be told.
    """
    start_unknown = False
    files: list[ReplayFile] = []
    gaps: list[tuple[int, int]] = []
    emitted = 0  # rows [0, emitted) are accounted for (held or gap)
    for position, suffix in enumerate(suffixes):
        path = _path(replay_dir, "add_count", suffix)
        add_count = int(load_array(path, dtype=np.int64, shape=()))
        if add_count < 0:
            raise ReplayFormatError(f"{path}: negative add_count {add_count}")
        last = position == len(suffixes) - 1
        if add_count >= capacity or (add_count == capacity - 1 and not files):  # a full log
            if add_count % capacity != capacity - 1:
                raise ReplayFormatError(
                    f"{path}: add_count {add_count} is not one less than a multiple of the capacity "
                    f"{capacity}, as every full checkpoint's is (Dopamine logs once slot C-2 is filled)"
                )
            end_row = add_count
        elif not last:
            raise ReplayFormatError(
                f"{path}: add_count {add_count} is below the capacity {capacity}, which only the last "
                f"checkpoint of a run may have (suffixes present: {suffixes[0]}..{suffixes[-1]})"
            )
        elif not files:  # the only file: a run shorter than the capacity, or every earlier log skipped
            end_row, start_unknown = _only_file_rows(replay_dir, suffix, add_count, capacity)
        else:  # the partial last file stores the cursor only
            end_row = _partial_end_row(replay_dir, files[-1], suffix, add_count)
        if files and end_row < files[-1].end_row:
            raise ReplayFormatError(
                f"{path}: add_count {add_count} goes back in time "
                f"(the previous file reached row {files[-1].end_row})"
            )
        first_row = max(end_row - capacity, emitted, 0)
        if first_row > emitted:
            gaps.append((emitted, first_row))
            log.warning(
                "%s: rows %d..%d are in no file (a skipped or missing log)", path, emitted, first_row - 1
            )
        files.append(ReplayFile(suffix, position, add_count, end_row, first_row, capacity))
        emitted = max(emitted, end_row)
    if start_unknown:
        log.warning(
            "%s: the first checkpoint had wrapped before any log: the run's start is unknown", replay_dir
        )
    return files, gaps, start_unknown


def _only_file_rows(replay_dir: Path, suffix: int, cursor: int, capacity: int) -> tuple[int, bool]:
    """Rows seen when a run's only file, partial, was written; and whether earlier rows are unknown.

    It never wrapped if it holds rows [0, cursor): slots [cursor, C-1) were never written (all zero; the
    last slot may hold allocation leftovers, as in Dopamine's own files) and slots 0-2 hold the run's first
    padding. If it wrapped, every earlier log was skipped, and slot C-2 holds padding left by the newest
    skipped one (see `_log_skipped`): a terminal lies at most three rows before it, inside [cursor, C-1)
    when the cursor is three rows or more before C-2. Otherwise the oldest rows lie inside that padding,
    and the episode it opens has its first step in slot C-1, 0 or 1: a non-zero row among slots 0-2 where
    a run's first padding would be or, for a one-step episode, a terminal in slot C-1 (which a buffer that
    never wrapped never wrote). At cursor 0 the file holds C rows, and whether more came before cannot be
    told: a buffer filled exactly without reaching a log looks like one that wrapped a whole number of
    times, so the start is reported unknown.
    """
    arrays = _small_arrays(replay_dir, suffix, capacity)
    if cursor == 0:
        return (capacity, True) if arrays["terminal"].any() else (0, False)  # else nothing was ever added
    if any(a[cursor : capacity - 1].any() for a in arrays.values()):
        wrapped = True
    elif cursor <= capacity - 2 - PADDING_ROWS:
        wrapped = False
    else:
        wrapped = bool(arrays["terminal"][capacity - 1]) or not _head_is_padding(replay_dir, suffix, arrays)
    return cursor + capacity * wrapped, wrapped


def _head_is_padding(replay_dir: Path, suffix: int, arrays: dict[str, np.ndarray]) -> bool:
    """Whether slots 0-2 hold padding, as at a run's start: all zero, frames included."""
    head = range(PADDING_ROWS)
    return not any(a[: head.stop].any() for a in arrays.values()) and not _frames_nonzero(
        replay_dir, suffix, len(arrays["terminal"]), head
    )


def _partial_end_row(replay_dir: Path, previous: ReplayFile, suffix: int, cursor: int) -> int:
    """Rows seen when the partial last file was written, which stores only the cursor `T % C`.

    With no log since `previous`, `T` is the first count at or after `previous.end_row` congruent to the
    cursor; with a skipped log in between, the whole file is new and `T` is (at least) a capacity later.
    """
    capacity = previous.capacity
    end_row = previous.end_row + (cursor - previous.end_row) % capacity
    path = _path(replay_dir, "add_count", suffix)
    if suffix > previous.suffix + 1:
        log.warning("%s: the checkpoints between %d and %d are missing", path, previous.suffix, suffix)
        return end_row + capacity
    before, now = (
        _small_arrays(replay_dir, previous.suffix, capacity),
        _small_arrays(replay_dir, suffix, capacity),
    )
    if _log_skipped(replay_dir, suffix, before, now, cursor):
        log.warning("%s: a log was skipped after checkpoint %d: its rows are lost", path, previous.suffix)
        return end_row + capacity
    unchanged = np.ones(capacity, bool)  # slots not written since `previous`
    unchanged[np.arange(previous.end_row, end_row) % capacity] = False
    if not all(np.array_equal(before[k][unchanged], now[k][unchanged]) for k in before):
        raise ReplayFormatError(
            f"{path}: checkpoint {suffix} differs from checkpoint {previous.suffix} in slots written before "
            f"checkpoint {previous.suffix} was logged: the two files are not from the same run"
        )
    return end_row


def _log_skipped(
    replay_dir: Path, suffix: int, before: dict[str, np.ndarray], now: dict[str, np.ndarray], cursor: int
) -> bool:
    """Whether a log was skipped between the last full file (`before`) and the partial last one (`now`).

    A full file is logged right after the add() call that fills slot C-2, so slot C-2 then holds a step,
    and nothing writes that slot again before the next log is due. A log is skipped only when one add()
    call (an episode's three padding rows and its first step) runs past slot C-2, which then holds
    padding. So `now` holds padding in slot C-2 exactly when a log was skipped since `before`.

    Padding follows a terminal at most three rows before it. When `now`'s oldest rows start less than
    three rows before slot C-2 and none is a terminal, they are padding if they are all zero where
    `before` holds other values (its step), and otherwise the frame in slot C-2 tells: padding frames are
    zero, a step's are not.
    """
    capacity = len(now["terminal"])
    seam = capacity - 2
    rows_before = min(PADDING_ROWS, (seam - cursor) % capacity)  # rows held before the seam, in time order
    if now["terminal"][[(seam - j) % capacity for j in range(1, rows_before + 1)]].any():
        return True
    if rows_before == PADDING_ROWS:
        return False
    oldest = slice(cursor, seam + 1)  # the oldest rows, up to the seam
    if any(a[oldest].any() for a in now.values()):
        return False
    if any(a[oldest].any() for a in before.values()):
        return True
    return not _frames_nonzero(replay_dir, suffix, capacity, range(seam, seam + 1))


def _frames_nonzero(replay_dir: Path, suffix: int, capacity: int, slots: range) -> bool:
    """Whether any frame in `slots` is non-zero; inflates the observation file up to the last of them."""
    path = _path(replay_dir, "observation", suffix)
    with NpyGzReader(path) as reader:
        check_observation_header(reader, capacity)
        start = 0
        for chunk in reader.iter_chunks(256):
            lo, hi = max(slots.start, start), min(slots.stop, start + len(chunk))
            if lo < hi and chunk[lo - start : hi - start].any():
                return True
            start += len(chunk)
            if start >= slots.stop:
                break
    return False


def check_observation_header(reader: NpyGzReader, capacity: int) -> None:
    """An observation file holds one uint8 84x84 frame per slot."""
    if reader.dtype != np.uint8 or reader.shape != (capacity, 84, 84):
        raise ReplayFormatError(
            f"{reader.path}: expected uint8 frames of shape ({capacity}, 84, 84), "
            f"got {reader.dtype} {reader.shape}"
        )


def _small_arrays(replay_dir: Path, suffix: int, capacity: int) -> dict[str, np.ndarray]:
    arrays = {}
    for kind in ("action", "reward", "terminal"):
        dtype, _ = STORE_SPECS[kind]
        arrays[kind] = load_array(_path(replay_dir, kind, suffix), dtype=dtype, shape=(capacity,))
    return arrays


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

    def feed(self, path: Path, file: ReplayFile, arrays: dict[str, np.ndarray]) -> None:
        """Consume this file's new rows (global rows [first_row, end_row)) in time order."""
        start, stop = file.first_row, file.end_row
        if stop <= start:
            return
        slots = file.slots(start, stop)
        fields = [arrays["action"][slots], arrays["reward"][slots], arrays["terminal"][slots]]
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


def index_run(replay_dir: Path | str) -> RunIndex:
    """Place every file of a run in time order and list its episodes, reading only the small arrays."""
    replay_dir = Path(replay_dir)
    suffixes = _check_suffixes(replay_dir)
    capacity = _capacity(replay_dir, suffixes[0])
    files, gaps, start_unknown = _plan_files(replay_dir, suffixes, capacity)
    splitter = _EpisodeSplitter()
    if start_unknown:
        splitter.gap()
    gap_starts = {stop for _, stop in gaps}
    for file in files:
        if file.new_rows and file.first_row in gap_starts:
            splitter.gap()
        arrays = _small_arrays(replay_dir, file.suffix, capacity)
        splitter.feed(_path(replay_dir, "terminal", file.suffix), file, arrays)
    index = RunIndex(replay_dir, capacity, files, splitter.finish(), gaps, start_unknown)
    log.info(
        "%s: %d files, %d episodes (%d truncated), %d rows in gaps",
        replay_dir,
        len(files),
        len(index.episodes),
        sum(e.truncated for e in index.episodes),
        sum(b - a for a, b in gaps),
    )
    return index
