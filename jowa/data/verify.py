"""Prove that a directory holds a whole, readable DQN-Replay run before anything trusts it.

Cheap enough to run on every download: observation files (7 GB inflated each) are only opened for their
`.npy` header; the small arrays are inflated to the end so a truncated or damaged gzip is caught.
Every problem names its file, so a caller can drop exactly the bad files and refetch them.

`verify_run` adds the manifest (sizes and md5s, `jowa.data.manifest.verify_against_manifest`) to this
format check; `jowa data verify` runs it, and so do the store-building commands before reading a byte,
so a damaged file is reported by name even where the sampler would never have read it.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from jowa.core.errors import JowaError, MissingInputError
from jowa.data.dopamine.format import (
    ALL_KINDS,
    FILES_PER_SUFFIX,
    STORE_KINDS,
    STORE_SPECS,
    NpyGzReader,
    checkpoint_filename,
    list_suffixes,
)
from jowa.data.episodes import ReplayFormatError
from jowa.data.manifest import read_manifest, verify_against_manifest
from jowa.data.rlu.run import check_shard_set, is_rlu_run

try:  # ISA-L inflates the small arrays several times faster than zlib; same format.
    from isal import igzip as _gzip_impl
    from isal.isal_zlib import error as _inflate_error
except ImportError:  # pragma: no cover - isal is a hard dependency
    _gzip_impl = gzip
    _inflate_error = zlib.error

__all__ = [
    "META_SPECS",
    "RunVerificationError",
    "check_file_set",
    "check_run_complete",
    "dopamine_problems",
    "file_problems",
    "join_problems",
    "rlu_problems",
    "verify_run",
    "verify_runs",
]

#: dtype and shape of the two metadata arrays (Dopamine's `add_count` and `invalid_range` attributes).
META_SPECS = {"add_count": ("int64", ()), "invalid_range": ("int64", (5,))}
GZIP_MAGIC = b"\x1f\x8b"

log = logging.getLogger(__name__)


class RunVerificationError(JowaError, ValueError):
    """A run directory does not match its manifest, or a file in it is not what its name says."""


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


def dopamine_problems(replay_dir: Path) -> dict[Path, str]:
    """The format check of a Dopamine-layout run: every file of suffixes 0..max (a missing one too)."""
    replay_dir = Path(replay_dir)
    found = list_suffixes(replay_dir)
    if not found:
        return {replay_dir: f"{replay_dir}: no DQN-Replay files (named like add_count_ckpt.0.gz)"}
    return file_problems(replay_dir, range(max(found) + 1))


def rlu_problems(replay_dir: Path) -> dict[Path, str]:
    """The format check of an RL Unplugged run: every shard there, each a gzip file.

    Records are checked (framing, CRCs, fields) when the run is downloaded and again as it is indexed;
    with the md5s matching the manifest written after that check, a cheap look suffices here.
    """
    try:
        shards = check_shard_set(Path(replay_dir))
    except ReplayFormatError as exc:
        return {Path(replay_dir): str(exc)}
    problems = {}
    for path in shards:
        try:
            _check_gzip_magic(path)
        except ReplayFormatError as exc:
            problems[path] = str(exc)
    return problems


def verify_run(
    replay_dir: Path,
    manifest: Path,
    format_problems: Callable[[Path], dict[Path, str]] = dopamine_problems,
) -> dict[Path, str]:
    """{file: everything wrong with it}: size and md5 against `manifest`, then `format_problems`.

    The format check runs on every file, even one whose md5 is already wrong, so a file that is not a
    gzip file at all (an HTML error page, a truncated copy) says so next to its size.
    """
    replay_dir, manifest = Path(replay_dir), Path(manifest)
    problems = verify_against_manifest(replay_dir, manifest)
    if not replay_dir.is_dir():
        return problems
    for path, message in format_problems(replay_dir).items():
        if path not in problems:
            problems[path] = message
        elif path.exists():
            problems[path] += "; " + message.removeprefix(f"{path}: ")
    return problems


def verify_runs(pairs: Iterable[tuple[Path, Path]]) -> int:
    """`verify_run` over (replay_dir, manifest) pairs; one error names every bad file of every run.

    Returns the number of files checked. A missing or malformed manifest is one more problem.
    """
    problems: dict[Path, str] = {}
    checked = 0
    for replay_dir, manifest in pairs:
        try:
            rows = read_manifest(manifest)
        except (OSError, ValueError) as exc:
            problems[Path(manifest)] = str(exc)
            continue
        size = sum(row["size"] for row in rows) / 1e9
        log.info("%s: checking %d files (%.2f GB) against %s", replay_dir, len(rows), size, manifest)
        checked += len(rows)
        layout_problems = rlu_problems if is_rlu_run(Path(replay_dir)) else dopamine_problems
        found = verify_run(replay_dir, manifest, layout_problems)
        problems |= found
        if not found:
            log.info("%s: every file matches %s", replay_dir, manifest)
    if problems:
        raise RunVerificationError(
            f"{join_problems(problems)}. Restore these files, or delete the run and its manifest and "
            "make it again (`jowa data download` or `jowa data generate`)"
        )
    return checked


def _check_file(path: Path, kind: str) -> int:
    """Header dtype/shape of one file (and, for the small arrays, the whole gzip stream); returns rows."""
    _check_gzip_magic(path)
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


def _check_gzip_magic(path: Path) -> None:
    """A file that is not gzip at all says so, instead of an inflate error about its end."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise ReplayFormatError(f"{path}: file not found") from None
    if not head:
        raise ReplayFormatError(f"{path}: empty file, expected a gzip file")
    if not head.startswith(GZIP_MAGIC):
        raise ReplayFormatError(f"{path}: not a gzip file (it starts with {head!r})")


def _inflate_to_end(path: Path) -> None:
    """Inflate a small file to its end, discarding the output: catches truncation and CRC damage."""
    try:
        with _gzip_impl.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error, _inflate_error) as exc:
        raise ReplayFormatError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc


# ------------------------------------------------------------------------------- `jowa data verify`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replay-dirs",
        "--replay-dir",
        type=Path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="run directories to check (DQN-Replay replay_logs or RL Unplugged shards)",
    )
    parser.add_argument(
        "--manifests",
        "--manifest",
        type=Path,
        nargs="+",
        required=True,
        metavar="TSV",
        help="their manifests, in the same order",
    )


def main(args: argparse.Namespace) -> None:
    if len(args.replay_dirs) != len(args.manifests):
        raise MissingInputError(
            f"--replay-dirs and --manifests must list the same number of items "
            f"({len(args.replay_dirs)}, {len(args.manifests)})"
        )
    checked = verify_runs(zip(args.replay_dirs, args.manifests, strict=True))
    log.info("%d run(s), %d files: sizes, md5s and formats all match", len(args.manifests), checked)
