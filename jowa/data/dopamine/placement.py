"""Where each file of a DQN-Replay run sits on the run's global row axis (docs: dqn-replay-format §1.5).

A file whose buffer had seen `T` rows holds rows `[T - C, T)`, row `r` in slot `r % C`. A full file
stores `T` as its `add_count`. The partial last file stores only the cursor `T % C`: `T` is the first
count after the previous file's that is congruent to it, or a capacity later if a log was skipped in
between. Whether one was is read from slot C-2 (see `_log_skipped`), never from how alike two files
look: zero rows (padding, or a no-op step with no reward) match by coincidence. Suffix numbers only
order the files and show which are missing. A skipped log loses rows; when the file shows that they were
only the padding before an episode's first step, they are no gap (see `_lost_only_padding`).

Everything here works on the small per-row arrays, which the caller reads once per file; the frames of
a few slots are read only in the rare runs whose small arrays cannot place a file or tell lost padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jowa.data.dopamine.format import STACK_SIZE, NpyGzReader, checkpoint_filename
from jowa.data.episodes import ReplayFormatError

log = logging.getLogger(__name__)
PADDING_ROWS = STACK_SIZE - 1
Arrays = dict[str, np.ndarray]  # a file's "action", "reward" and "terminal" arrays, by slot


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


@dataclass(frozen=True)
class Placement:
    """Where a file ends on the run's row axis, and what that says about the rows no file holds before it."""

    end_row: int  # rows the buffer had seen when the file was written
    start_unknown: bool = False  # the run's only file had wrapped: every earlier log was skipped
    lost_only_padding: bool = False  # the rows lost just before it are padding still due, no step


def replay_path(replay_dir: Path, kind: str, suffix: int) -> Path:
    return replay_dir / checkpoint_filename(kind, suffix)


def end_row(
    replay_dir: Path,
    suffix: int,
    add_count: int,
    arrays: Arrays,
    previous: tuple[ReplayFile, Arrays] | None,
    last: bool,
) -> Placement:
    """Where this file ends, given the previous file (None for the run's first) and its arrays."""
    capacity = len(arrays["terminal"])
    path = replay_path(replay_dir, "add_count", suffix)
    if add_count >= capacity or (add_count == capacity - 1 and previous is None):  # a full log
        if add_count % capacity != capacity - 1:
            raise ReplayFormatError(
                f"{path}: add_count {add_count} is not one less than a multiple of the capacity "
                f"{capacity}, as every full checkpoint's is (Dopamine logs once slot C-2 is filled)"
            )
        return Placement(add_count)
    if not last:
        raise ReplayFormatError(
            f"{path}: add_count {add_count} is below the capacity {capacity}, which only the last "
            f"checkpoint of a run may have"
        )
    if previous is None:  # the only file: a run shorter than the capacity, or every earlier log skipped
        return Placement(*_only_file_rows(replay_dir, suffix, add_count, arrays))
    return _partial_end_row(replay_dir, suffix, add_count, arrays, *previous)


def _only_file_rows(replay_dir: Path, suffix: int, cursor: int, arrays: Arrays) -> tuple[int, bool]:
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
    capacity = len(arrays["terminal"])
    if cursor == 0:
        return (capacity, True) if arrays["terminal"].any() else (0, False)  # else nothing was ever added
    if any(a[cursor : capacity - 1].any() for a in arrays.values()):
        wrapped = True
    elif cursor <= capacity - 2 - PADDING_ROWS:
        wrapped = False
    else:
        wrapped = bool(arrays["terminal"][capacity - 1]) or not _head_is_padding(replay_dir, suffix, arrays)
    return cursor + capacity * wrapped, wrapped


def _head_is_padding(replay_dir: Path, suffix: int, arrays: Arrays) -> bool:
    """Whether slots 0-2 hold padding, as at a run's start: all zero, frames included."""
    head = range(PADDING_ROWS)
    return not any(a[: head.stop].any() for a in arrays.values()) and not _frames_nonzero(
        replay_dir, suffix, len(arrays["terminal"]), head
    )


def _partial_end_row(
    replay_dir: Path, suffix: int, cursor: int, now: Arrays, previous: ReplayFile, before: Arrays
) -> Placement:
    """Where the partial last file ends; it stores only the cursor `T % C` of the count `T`.

    With no log since `previous`, `T` is the first count at or after `previous.end_row` congruent to the
    cursor; with a skipped log in between, the whole file is new and `T` is (at least) a capacity later.
    """
    capacity = previous.capacity
    end = previous.end_row + (cursor - previous.end_row) % capacity
    path = replay_path(replay_dir, "add_count", suffix)
    if suffix > previous.suffix + 1:
        log.warning("%s: the checkpoints between %d and %d are missing", path, previous.suffix, suffix)
        return Placement(end + capacity)
    if _log_skipped(replay_dir, suffix, before, now, cursor):
        if _lost_only_padding(replay_dir, suffix, before, now, cursor):
            return Placement(end + capacity, lost_only_padding=True)
        log.warning("%s: a log was skipped after checkpoint %d: its rows are lost", path, previous.suffix)
        return Placement(end + capacity)
    # the slots not written since `previous` (whose last row sits in slot C-2): from the cursor to C-2
    unchanged = slice(cursor, capacity - 1) if end > previous.end_row else slice(None)
    if not all(np.array_equal(before[k][unchanged], now[k][unchanged]) for k in before):
        raise ReplayFormatError(
            f"{path}: checkpoint {suffix} differs from checkpoint {previous.suffix} in slots written before "
            f"checkpoint {previous.suffix} was logged: the two files are not from the same run"
        )
    return Placement(end)


def _log_skipped(replay_dir: Path, suffix: int, before: Arrays, now: Arrays, cursor: int) -> bool:
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


def _lost_only_padding(replay_dir: Path, suffix: int, before: Arrays, now: Arrays, cursor: int) -> bool:
    """Whether the rows a log skipped before the partial last file lost are only padding, no step.

    The file is placed as if one log was skipped: the previous file ends at a count `E` (its last row in
    slot C-2), this one holds rows from `E + m`, m = cursor + 1, so rows [E, E + m) are lost. They are
    only padding if the previous file ends on a terminal and m is less than the padding's three rows:
    then the rest of it fills this file's oldest slots, m-1 to 1, and the episode's first step slot 2.
    That shape also proves that no more than m rows were lost: had a whole wrap more been lost, its log
    was skipped too, so its slot C-2 held padding whose step came in slot C-1, 0 or 1, and any padding
    after that step (a one-step episode's) would reach slot 2. Padding lost up to the step (m = 3) leaves
    nothing to see, and a wrap more lost would look the same: that stays a gap. The small arrays cannot
    tell padding from a no-op step with no reward, so the frames of slots m-1 to 2 are read too; a no-op
    step on a black screen looks like padding even then, and only the terminal before it tells.
    """
    capacity = len(now["terminal"])
    if not before["terminal"][capacity - 2] or cursor >= PADDING_ROWS - 1:
        return False
    slots = range(cursor, PADDING_ROWS)  # the padding still due, then the first step
    small = np.array([any(a[slot] for a in now.values()) for slot in slots])
    if small[:-1].any():
        return False
    nonzero = small | _nonzero_frames(replay_dir, suffix, capacity, slots)
    return not nonzero[:-1].any() and bool(nonzero[-1])


def _frames_nonzero(replay_dir: Path, suffix: int, capacity: int, slots: range) -> bool:
    """Whether any frame in `slots` is non-zero."""
    return bool(_nonzero_frames(replay_dir, suffix, capacity, slots).any())


def _nonzero_frames(replay_dir: Path, suffix: int, capacity: int, slots: range) -> np.ndarray:
    """Per slot in `slots`, whether its frame is non-zero; inflates the observation file up to the last."""
    nonzero = np.zeros(len(slots), bool)
    with NpyGzReader(replay_path(replay_dir, "observation", suffix)) as reader:
        check_observation_header(reader, capacity)
        start = 0
        for chunk in reader.iter_chunks(256):
            lo, hi = max(slots.start, start), min(slots.stop, start + len(chunk))
            if lo < hi:
                nonzero[lo - slots.start : hi - slots.start] = chunk[lo - start : hi - start].any(axis=(1, 2))
            start += len(chunk)
            if start >= slots.stop:
                break
    return nonzero


def check_observation_header(reader: NpyGzReader, capacity: int) -> None:
    """An observation file holds one uint8 84x84 frame per slot."""
    if reader.dtype != np.uint8 or reader.shape != (capacity, 84, 84):
        raise ReplayFormatError(
            f"{reader.path}: expected uint8 frames of shape ({capacity}, 84, 84), "
            f"got {reader.dtype} {reader.shape}"
        )
