"""Pull the rows of chosen episodes out of an indexed run: per-row arrays and frames, streaming.

`extract_frames` inflates each observation file that holds a wanted row once, in chunks, and hands runs
of wanted frames to a sink (a training store's writer): peak memory is one chunk, whatever the file
size. The plan of what to copy follows the number of episodes, not of rows, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jowa.data.dopamine.format import NpyGzReader
from jowa.data.dopamine.placement import PADDING_ROWS, ReplayFile, check_observation_header
from jowa.data.dopamine.replay import RunIndex, index_run
from jowa.data.episodes import Episode, EpisodeArrays, FrameSink


def _pieces(index: RunIndex, start: int, stop: int) -> Iterator[tuple[ReplayFile, int, int]]:
    """Split global rows [start, stop) by the file that holds them."""
    for file in index.files:
        lo, hi = max(start, file.first_row), min(stop, file.end_row)
        if lo < hi:
            yield file, lo, hi


@dataclass(frozen=True)
class SlotRun:
    """`n` wanted rows stored in consecutive slots from `slot`, going to destination rows from `dest`."""

    slot: int
    n: int
    dest: int


def _plan(index: RunIndex, episodes: Iterable[Episode], dest_start: int) -> dict[int, list[SlotRun]]:
    """Per file position: the wanted rows as slot runs sorted by slot (one or two per episode piece).

    The plan's size follows the number of episodes, not of rows, so memory stays flat on long runs.
    """
    plan: dict[int, list[SlotRun]] = {}
    dest = dest_start
    for episode in episodes:
        for file, lo, hi in _pieces(index, episode.start_row, episode.start_row + episode.length):
            first_slot, piece_dest = lo % file.capacity, dest + lo - episode.start_row
            head = min(hi - lo, file.capacity - first_slot)  # rows before the slots wrap to 0
            runs = plan.setdefault(file.position, [])
            runs.append(SlotRun(first_slot, head, piece_dest))
            if head < hi - lo:
                runs.append(SlotRun(0, hi - lo - head, piece_dest + head))
        dest += episode.length
    for runs in plan.values():
        runs.sort(key=lambda run: run.slot)
    return plan


def files_holding(index: RunIndex, episodes: Iterable[Episode]) -> list[ReplayFile]:
    """The files that hold at least one row of `episodes`: those that extraction reads."""
    positions = {
        file.position for e in episodes for file, _, _ in _pieces(index, e.start_row, e.start_row + e.length)
    }
    return [file for file in index.files if file.position in positions]


def extract_rows(index: RunIndex, episodes: Sequence[Episode]) -> EpisodeArrays:
    """Actions, rewards and terminals of `episodes`, concatenated, from the values the index holds."""
    lengths = np.array([e.length for e in episodes], np.int64)
    out = EpisodeArrays(
        np.zeros(lengths.sum(), np.int32),
        np.zeros(lengths.sum(), np.float32),
        np.zeros(lengths.sum(), np.uint8),
    )
    dest = 0
    for episode in episodes:
        for file, lo, hi in _pieces(index, episode.start_row, episode.start_row + episode.length):
            held = index.held[file.position]
            src = slice(lo - file.first_row, hi - file.first_row)
            dst = slice(dest + lo - episode.start_row, dest + hi - episode.start_row)
            out.actions[dst] = held.actions[src]
            out.rewards[dst] = held.rewards[src]
        dest += episode.length
    out.terminals[(np.cumsum(lengths) - 1)[index.ends_in_terminal(episodes)]] = 1
    return out


def extract_frames(
    index: RunIndex,
    episodes: Sequence[Episode],
    sink: FrameSink,
    *,
    dest_start: int = 0,
    chunk_rows: int = 32,  # small blocks stay in cache: inflate runs ~4x faster than with 1000-row blocks
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Stream every observation file that holds a wanted row once, handing runs of wanted frames to `sink`.

    `sink(block, dest)` receives consecutive frames for destination rows [dest, dest + len(block)); the
    block is a view into a reused buffer. Files holding no wanted row are not read at all.
    """
    plan = _plan(index, episodes, dest_start)
    for file in index.files:
        if file.position not in plan:
            continue
        path = index.path("observation", file)
        with NpyGzReader(path) as reader:
            check_observation_header(reader, file.capacity)
            _scatter(reader, plan[file.position], sink, chunk_rows, on_bytes)


def _scatter(
    reader: NpyGzReader,
    runs: list[SlotRun],
    sink: FrameSink,
    chunk_rows: int,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Read a file chunk by chunk, handing each run's part in the chunk to `sink`; stop after the last run."""
    last_needed = max(run.slot + run.n for run in runs)
    first_open = 0  # runs before this index end before the current chunk
    chunk_start = 0
    for chunk in reader.iter_chunks(chunk_rows):
        chunk_stop = chunk_start + len(chunk)
        i = first_open
        while i < len(runs) and runs[i].slot < chunk_stop:
            run = runs[i]
            lo, hi = max(run.slot, chunk_start), min(run.slot + run.n, chunk_stop)
            if lo < hi:
                sink(chunk[lo - chunk_start : hi - chunk_start], run.dest + lo - run.slot)
            if run.slot + run.n <= chunk_stop and i == first_open:
                first_open += 1
            i += 1
        if on_bytes is not None:
            on_bytes(chunk.nbytes)
        chunk_start = chunk_stop
        if chunk_start >= last_needed:
            break


def read_episodes(replay_dir: Path | str) -> Iterator[tuple[Episode, EpisodeArrays, np.ndarray]]:
    """Every episode of a run in time order with its arrays and frames, for tests and small runs.

    This holds all frames of the run in memory; the pipeline uses `index_run` + `extract_frames`. An
    episode that starts after a gap may begin with leftover padding rows (the padding's frames cannot be
    checked without inflating the whole file first): such rows, all-zero in every field, are dropped.
    """
    index = index_run(replay_dir)
    episodes = index.episodes
    rows = extract_rows(index, episodes)
    frames = np.zeros((len(rows.actions), 84, 84), np.uint8)

    def sink(block: np.ndarray, dest: int) -> None:
        frames[dest : dest + len(block)] = block

    extract_frames(index, episodes, sink)
    offset = 0
    for episode in episodes:
        sl = slice(offset, offset + episode.length)
        ep_rows = EpisodeArrays(rows.actions[sl], rows.rewards[sl], rows.terminals[sl])
        ep_frames = frames[sl]
        offset += episode.length
        if episode.after_gap:
            episode, ep_rows, ep_frames = _drop_leading_padding(episode, ep_rows, ep_frames)
        if episode.length:
            yield episode, ep_rows, ep_frames


def _drop_leading_padding(
    episode: Episode, rows: EpisodeArrays, frames: np.ndarray
) -> tuple[Episode, EpisodeArrays, np.ndarray]:
    n = 0
    while (
        n < min(PADDING_ROWS, episode.length)
        and rows.actions[n] == 0
        and rows.rewards[n] == 0
        and rows.terminals[n] == 0
        and not frames[n].any()
    ):
        n += 1
    if n == 0:
        return episode, rows, frames
    trimmed = Episode(episode.start_row + n, episode.length - n, episode.truncated, episode.position, True)
    return trimmed, EpisodeArrays(rows.actions[n:], rows.rewards[n:], rows.terminals[n:]), frames[n:]
