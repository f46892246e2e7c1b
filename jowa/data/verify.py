"""Prove that a directory holds a whole, readable DQN-Replay run before anything trusts it.

Cheap enough to run on every download: observation files (7 GB inflated each) are only opened for their
`.npy` header; the small arrays are inflated to the end so a truncated or damaged gzip is caught.
Every problem names its file, so a caller can drop exactly the bad files and refetch them.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from pathlib import Path

from jowa.data.dopamine_format import (
    ALL_KINDS,
    FILES_PER_SUFFIX,
    STORE_KINDS,
    STORE_SPECS,
    NpyGzReader,
    ReplayFormatError,
    checkpoint_filename,
    list_suffixes,
)

try:  # ISA-L inflates the small arrays several times faster than zlib; same format.
    from isal import igzip as _gzip_impl
    from isal.isal_zlib import error as _inflate_error
except ImportError:  # pragma: no cover - isal is a hard dependency
    _gzip_impl = gzip
    _inflate_error = zlib.error

__all__ = ["META_SPECS", "check_file_set", "check_run_complete", "file_problems", "join_problems"]

#: dtype and shape of the two metadata arrays (Dopamine's `add_count` and `invalid_range` attributes).
META_SPECS = {"add_count": ("int64", ()), "invalid_range": ("int64", (5,))}


def check_run_complete(replay_dir: Path) -> list[int]:
    """Check that `replay_dir` holds a whole, readable DQN-Replay run and return its suffixes."""
    replay_dir = Path(replay_dir)
    suffixes = check_file_set(replay_dir)
    problems = file_problems(replay_dir, suffixes)
    if problems:
        raise ReplayFormatError(join_problems(problems))
    return suffixes


def check_file_set(replay_dir: Path) -> list[int]:
    """Suffixes 0..max, each with all FILES_PER_SUFFIX files; the error names what is missing."""
    found = list_suffixes(replay_dir)
    if not found:
        raise ReplayFormatError(f"{replay_dir}: no DQN-Replay files (named like add_count_ckpt.0.gz)")
    gaps = []
    for suffix in range(max(found) + 1):
        kinds = found.get(suffix, set())
        if len(kinds) == FILES_PER_SUFFIX:
            continue
        names = [checkpoint_filename(kind, suffix) for kind in ALL_KINDS if kind not in kinds]
        what = "all its files are missing" if not kinds else "missing " + ", ".join(names)
        gaps.append(f"suffix {suffix}: {what}")
    if gaps:
        raise ReplayFormatError(f"{replay_dir}: incomplete run (suffixes 0..{max(found)}): {'; '.join(gaps)}")
    return sorted(found)


def file_problems(replay_dir: Path, suffixes: Iterable[int]) -> dict[Path, str]:
    """{file: what is wrong with it} over every file of every suffix; empty when all are sound."""
    problems: dict[Path, str] = {}
    for suffix in suffixes:
        rows: dict[Path, int] = {}
        for kind in ALL_KINDS:
            path = replay_dir / checkpoint_filename(kind, suffix)
            try:
                n = _check_file(path, kind)
            except ReplayFormatError as exc:
                problems[path] = str(exc)
                continue
            if kind in STORE_KINDS:
                rows[path] = n
        if len(set(rows.values())) > 1:
            detail = ", ".join(f"{p.name}: {n}" for p, n in rows.items())
            for path in rows:
                problems[path] = f"{path}: suffix {suffix} arrays disagree on the row count ({detail})"
    return problems


def join_problems(problems: dict[Path, str]) -> str:
    """One message for all bad files, in file order so it reads the same on every run."""
    return f"{len(problems)} bad file(s): " + "; ".join(problems[p] for p in sorted(problems))


def _check_file(path: Path, kind: str) -> int:
    """Header dtype/shape of one file (and, for the small arrays, the whole gzip stream); returns rows."""
    with NpyGzReader(path) as reader:
        if kind in STORE_KINDS:
            dtype, row_shape = STORE_SPECS[kind]
            ok = (
                reader.dtype == dtype
                and len(reader.shape) == 1 + len(row_shape)
                and reader.row_shape == row_shape
            )
            want = f"{dtype} rows of shape {row_shape}"
        else:
            dtype, shape = META_SPECS[kind]
            ok = reader.dtype == dtype and reader.shape == shape
            want = f"{dtype} of shape {shape}"
        if not ok:
            raise ReplayFormatError(f"{path}: {reader.dtype} array of shape {reader.shape}, expected {want}")
        rows = reader.rows
    if kind != "observation":
        _inflate_to_end(path)
    return rows


def _inflate_to_end(path: Path) -> None:
    """Inflate a small file to its end, discarding the output: catches truncation and CRC damage."""
    try:
        with _gzip_impl.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error, _inflate_error) as exc:
        raise ReplayFormatError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
