"""A run in RL Unplugged's episode-ordered layout, read as the Dopamine reader reads a DQN-Replay run.

Indexing reads every shard once (inflate + CRC + protobuf parse, no PNG decode) and lays the episodes
end to end on one time axis, each with its checkpoint (shard) index as its position, so the fine-tuning
quality windows and the subsampling draw work on both layouts unchanged. Extraction reads only the shards
holding a wanted episode, a second time, and decodes only the wanted episodes' frames: indexing costs a
fraction of the PNG decode (benchmarks/bench_rlu.py), so two passes beat keeping a run's frames around.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jowa.data.episodes import Episode, EpisodeArrays, FrameSink, ReplayFormatError
from jowa.data.rlu.format import (
    decode_episode,
    decode_frames,
    encode_episode,
    parse_shard_filename,
    shard_filename,
)
from jowa.data.rlu.tfrecord import read_records, write_records

log = logging.getLogger(__name__)

__all__ = [
    "RluRun",
    "check_shard_set",
    "index_rlu_run",
    "is_rlu_run",
    "list_shards",
    "shard_problems",
    "write_rlu_run",
]


def list_shards(replay_dir: Path) -> dict[str, tuple[int, int, int]]:
    """{file name: (run, shard, shards)} of the shard files in a directory."""
    found = {}
    for path in replay_dir.iterdir():
        parsed = parse_shard_filename(path.name)
        if parsed is not None and path.is_file():
            found[path.name] = parsed
    return found


def is_rlu_run(replay_dir: Path) -> bool:
    return replay_dir.is_dir() and bool(list_shards(replay_dir))


def check_shard_set(replay_dir: Path, names: Sequence[str] | None = None) -> list[Path]:
    """The run's shards in checkpoint order; one run, one shard count, none missing, else an error."""
    found = list_shards(replay_dir) if names is None else {n: parse_shard_filename(n) for n in names}
    if not found:
        raise ReplayFormatError(f"{replay_dir}: no RL Unplugged shards (named like run_1-00000-of-00050)")
    runs = {run for run, _, _ in found.values()}
    counts = {shards for _, _, shards in found.values()}
    if len(runs) > 1 or len(counts) > 1:
        raise ReplayFormatError(
            f"{replay_dir}: shards of several runs or shard counts ({', '.join(sorted(found)[:4])}, ...); "
            "a directory holds one run"
        )
    (run,), (count,) = runs, counts
    missing = sorted(set(range(count)) - {shard for _, shard, _ in found.values()})
    if missing:
        names_missing = ", ".join(shard_filename(run, s, count) for s in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ReplayFormatError(f"{replay_dir}: incomplete run, missing {names_missing}{more}")
    return [replay_dir / shard_filename(run, s, count) for s in range(count)]


@dataclass
class RluRun:
    """Episodes of one run on a global row axis; `records` says where each one is stored."""

    replay_dir: Path
    shards: list[Path]
    episodes: list[Episode]
    records: dict[int, int]  # episode start row -> record number within its shard
    action_ranges: dict[int, tuple[int, int]]  # episode start row -> (lowest, highest) action index
    gaps: list[tuple[int, int]] = field(default_factory=list)  # none: records are whole episodes
    layout: str = "rl-unplugged"

    @property
    def num_checkpoints(self) -> int:
        return len(self.shards)

    def whole_episodes(self) -> list[Episode]:
        return [e for e in self.episodes if not e.truncated]

    def action_outside(self, num_actions: int) -> tuple[str, int] | None:
        """(where, action) of the first record with an action outside [0, num_actions), or None.

        From the index alone: no record is read again.
        """
        for episode in self.episodes:
            low, high = self.action_ranges[episode.start_row]
            if low < 0 or high >= num_actions:
                where = f"{self.shards[episode.position]}: record {self.records[episode.start_row]}"
                return where, low if low < 0 else high
        return None

    def bytes_to_read(self, episodes: Sequence[Episode]) -> int:
        """Frame bytes extraction will decode (for a progress bar)."""
        return 84 * 84 * sum(e.length for e in episodes)

    def extract(
        self,
        episodes: Sequence[Episode],
        sink: FrameSink,
        *,
        dest_start: int = 0,
        on_bytes: Callable[[int], None] | None = None,
    ) -> EpisodeArrays:
        """Rows of `episodes` (concatenated in the given order); their frames go to `sink`."""
        total = sum(e.length for e in episodes)
        out = EpisodeArrays(np.zeros(total, np.int32), np.zeros(total, np.float32), np.zeros(total, np.uint8))
        wanted: dict[int, dict[int, tuple[Episode, int]]] = defaultdict(dict)  # shard -> record -> (ep, dest)
        dest = 0
        for episode in episodes:
            wanted[episode.position][self.records[episode.start_row]] = (episode, dest)
            dest += episode.length
        frames = np.empty((max((e.length for e in episodes), default=0), 84, 84), np.uint8)
        for position in sorted(wanted):
            todo = wanted[position]
            for number, record in enumerate(read_records(self.shards[position])):
                if number not in todo:
                    continue
                episode, at = todo.pop(number)
                where = f"{self.shards[position]}: record {number}"
                decoded = decode_episode(record, where)
                if len(decoded) != episode.length:
                    raise ReplayFormatError(f"{where}: changed since it was indexed; run the stage again")
                rows = slice(at, at + episode.length)
                out.actions[rows] = decoded.actions
                out.rewards[rows] = decoded.rewards
                out.terminals[at + episode.length - 1] = decoded.terminal
                decode_frames(decoded.observations, frames, where)
                sink(frames[: episode.length], dest_start + at)
                if on_bytes is not None:
                    on_bytes(episode.length * 84 * 84)
                if not todo:
                    break
        return out


def index_rlu_run(replay_dir: Path | str) -> RluRun:
    """Read every shard once and place its episodes, in order, on the run's time axis."""
    replay_dir = Path(replay_dir)
    if not replay_dir.is_dir():
        raise ReplayFormatError(f"{replay_dir}: run directory not found")
    shards = check_shard_set(replay_dir)
    episodes: list[Episode] = []
    records: dict[int, int] = {}
    action_ranges: dict[int, tuple[int, int]] = {}
    row, empty, mismatched = 0, 0, 0
    for position, path in enumerate(shards):
        for number, record in enumerate(read_records(path)):
            decoded = decode_episode(record, f"{path}: record {number}")
            mismatched += decoded.checkpoint != position
            if not len(decoded):  # a terminal observation alone: no transition
                empty += 1
                continue
            records[row] = number
            action_ranges[row] = (int(decoded.actions.min()), int(decoded.actions.max()))
            episodes.append(Episode(row, len(decoded), not decoded.terminal, position))
            row += len(decoded)
    if mismatched:
        log.warning("%s: %d episodes name another checkpoint than their shard's", replay_dir, mismatched)
    log.info(
        "%s: %d shards, %d episodes (%d not ending in a terminal state, %d empty), %d transitions",
        replay_dir,
        len(shards),
        len(episodes),
        sum(e.truncated for e in episodes),
        empty,
        row,
    )
    return RluRun(replay_dir, shards, episodes, records, action_ranges)


def write_rlu_run(
    episodes: Iterable[tuple[Episode, EpisodeArrays, np.ndarray]], out_dir: Path, run: int, shards: int
) -> None:
    """Write episodes (as `jowa.data.dopamine.extract.read_episodes` yields them) as RL Unplugged shards.

    Each episode goes to the shard of its `position`; one not known to be whole (cut, or after a gap)
    is written without the terminal step, as RL Unplugged writes a cut episode. For tests and
    benchmarks: the same episodes in both layouts must give the same store.
    """
    by_shard: dict[int, list[bytes]] = defaultdict(list)
    for number, (episode, rows, frames) in enumerate(episodes):
        terminal = bool(rows.terminals[-1]) and not episode.truncated
        by_shard[episode.position].append(
            encode_episode(
                checkpoint=episode.position,
                episode=number,
                frames=frames,
                actions=rows.actions,
                rewards=rows.rewards,
                terminal=terminal,
            )
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        write_records(out_dir / shard_filename(run, shard, shards), by_shard.get(shard, []))


def shard_problems(shards: Sequence[Path]) -> dict[Path, str]:
    """{shard: what is wrong with it} after reading every record (framing, CRCs, Example fields)."""
    problems = {}
    for path in shards:
        try:
            for number, record in enumerate(read_records(path)):
                decode_episode(record, f"{path}: record {number}")
        except ReplayFormatError as exc:
            problems[path] = str(exc)
    return problems
