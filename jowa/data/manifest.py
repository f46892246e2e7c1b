"""The manifest of a run: one TSV line per file with its size and md5, written once the run is complete.

Downstream rules take the manifest as the proof that a run directory is finished (a download or a
generation writes it last, atomically), and it lets a later run notice a changed or missing file cheaply.
`verify_against_manifest` checks a directory against it before anything reads the data; it knows
nothing of the files' format, so every data layout shares it (the format check is the caller's).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

from jowa.core.atomic import atomic_file
from jowa.core.errors import MissingInputError

__all__ = [
    "IGNORED_NAMES",
    "MANIFEST_COLUMNS",
    "ManifestRow",
    "file_sizes",
    "md5_files",
    "manifest_rows",
    "read_manifest",
    "verify_against_manifest",
    "write_manifest",
    "write_manifest_rows",
]

MANIFEST_COLUMNS = ("name", "size", "md5")
#: Entries Snakemake may put in a directory output (its mtime carrier); never data.
IGNORED_NAMES = frozenset({".snakemake_timestamp"})
#: Read size for hashing: large reads keep md5 at its compute-bound speed (see benchmarks/bench_md5.py).
HASH_BUFFER = 8 << 20

_MD5_RE = re.compile(r"[0-9a-f]{32}")


class ManifestRow(TypedDict):
    """One file of a run: its name inside the run directory, size in bytes and md5 as hex."""

    name: str
    size: int
    md5: str


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a manifest TSV; a malformed file raises ValueError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: manifest missing; download or generate the run first")
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: not a manifest (expected the header line 'name<TAB>size<TAB>md5')")
    rows: list[ManifestRow] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[1].isdigit() or not _MD5_RE.fullmatch(fields[2]):
            raise ValueError(f"{path}: line {lineno} is not `name<TAB>size<TAB>md5`: {line!r}")
        rows.append({"name": fields[0], "size": int(fields[1]), "md5": fields[2]})
    return rows


def write_manifest(replay_dir: Path, path: Path) -> list[ManifestRow]:
    """Hash every file of `replay_dir` and write the manifest TSV atomically; returns its rows."""
    rows = manifest_rows(Path(replay_dir))
    write_manifest_rows(rows, Path(path))
    return rows


def manifest_rows(replay_dir: Path) -> list[ManifestRow]:
    """The rows for every file of `replay_dir`, sorted by name (hashing is the slow part)."""
    sizes = sorted(file_sizes(replay_dir).items())
    digests = md5_files([replay_dir / name for name, _ in sizes])
    return [
        {"name": name, "size": size, "md5": md5} for (name, size), md5 in zip(sizes, digests, strict=True)
    ]


def verify_against_manifest(replay_dir: Path, manifest: Path) -> dict[Path, str]:
    """{file: what is wrong} for `replay_dir` against its manifest; empty when they agree exactly.

    Every listed file must be there with its size and md5 (hashed only when the size is right), and
    every file there must be listed. Each message starts with the file's path. A missing or malformed
    manifest raises instead: there is nothing to check against.
    """
    replay_dir, manifest = Path(replay_dir), Path(manifest)
    rows = read_manifest(manifest)
    if not replay_dir.is_dir():
        return {replay_dir: f"{replay_dir}: directory missing ({manifest} lists {len(rows)} files)"}
    present = {e.name: e for e in os.scandir(replay_dir) if e.name not in IGNORED_NAMES}
    problems: dict[Path, str] = {}
    to_hash: list[ManifestRow] = []
    for row in rows:
        path = replay_dir / row["name"]
        entry = present.get(row["name"])
        if entry is None or not entry.is_file():
            problems[path] = f"{path}: missing (listed in {manifest})"
        elif (size := entry.stat().st_size) != row["size"]:
            problems[path] = f"{path}: {size} bytes, {manifest} says {row['size']}"
        else:
            to_hash.append(row)
    digests = md5_files(replay_dir / row["name"] for row in to_hash)
    for row, md5 in zip(to_hash, digests, strict=True):
        if md5 != row["md5"]:
            path = replay_dir / row["name"]
            problems[path] = f"{path}: md5 {md5}, {manifest} says {row['md5']} (same size, other bytes)"
    listed = {row["name"] for row in rows}
    for name in sorted(set(present) - listed):
        problems[replay_dir / name] = f"{replay_dir / name}: not listed in {manifest}"
    return problems


def write_manifest_rows(rows: list[ManifestRow], path: Path) -> None:
    """Write rows computed earlier; separate from hashing so a caller can hash before moving the files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(MANIFEST_COLUMNS)] + [f"{r['name']}\t{r['size']}\t{r['md5']}" for r in rows]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def file_sizes(directory: Path, skip_suffix: str | None = None) -> dict[str, int]:
    """{name: size} of the plain files of `directory`, leaving out names ending in `skip_suffix`."""
    return {
        entry.name: entry.stat().st_size
        for entry in os.scandir(directory)
        if entry.is_file() and not (skip_suffix and entry.name.endswith(skip_suffix))
    }


def md5_files(paths: Iterable[Path], workers: int | None = None) -> list[str]:
    """The md5 of each file, in order, hashed by one thread per usable core (hashlib drops the GIL)."""
    paths = list(paths)
    workers = workers or len(os.sched_getaffinity(0))
    if workers == 1 or len(paths) <= 1:
        return [md5_file(p) for p in paths]
    with ThreadPoolExecutor(min(workers, len(paths))) as pool:
        return list(pool.map(md5_file, paths))


def md5_file(path: Path, buffer_bytes: int = HASH_BUFFER) -> str:
    """Hex md5 of a file, read in large blocks into one reused buffer."""
    digest = hashlib.md5(usedforsecurity=False)
    buffer = bytearray(buffer_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
