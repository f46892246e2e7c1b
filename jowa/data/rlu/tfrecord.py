"""TFRecord files without TensorFlow: the record framing, its CRC32C checks, and GZIP compression.

A TFRecord file is a sequence of records, each framed as
`uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`, little-endian, and the
whole file may be GZIP-compressed (RL Unplugged's Atari shards are). The framing is a few lines; the CRC is
`google_crc32c` (Google's C implementation) and the inflate is ISA-L. The `tfrecord` package on PyPI
does the same in Python, with a CRC per record from another C library; over the same shards it read
16k frames/s per core against our 232k (records parsed into Examples included), so the framing is ours
(benchmarks/bench_rlu.py).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import google_crc32c
from isal import igzip

from jowa.core.atomic import atomic_file
from jowa.data.episodes import ReplayFormatError

__all__ = ["GZIP_MAGIC", "masked_crc32c", "read_records", "write_records"]

GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's CRC: CRC32C rotated right by 15 bits plus a constant, so CRCs of CRCs stay strong."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path: Path | str, *, check_crc: bool = True) -> Iterator[bytes]:
    """Every record of a GZIP-compressed TFRecord file, in order; damage raises a ReplayFormatError.

    The error names the file and the record's number and offset (in the inflated stream), and says
    whether the file is not gzip at all, ends early, or fails a CRC.
    """
    path = Path(path)
    with path.open("rb") as raw:
        if raw.read(2) != GZIP_MAGIC:
            raise ReplayFormatError(
                f"{path}: not a gzip file (a GZIP-compressed TFRecord shard was expected)"
            )
    offset, number = 0, 0
    try:
        with igzip.open(path, "rb") as fh:
            while header := fh.read(_HEADER.size):
                where = f"{path}: record {number} at inflated offset {offset}"
                if len(header) < _HEADER.size:
                    raise ReplayFormatError(f"{where}: file ends inside a record header")
                length, length_crc = _HEADER.unpack(header)
                if check_crc and masked_crc32c(header[:8]) != length_crc:
                    raise ReplayFormatError(f"{where}: the length's CRC does not match (corrupt framing)")
                data = fh.read(length)
                footer = fh.read(_FOOTER.size)
                if len(data) < length or len(footer) < _FOOTER.size:
                    raise ReplayFormatError(f"{where}: file ends inside a record of {length} bytes")
                if check_crc and masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
                    raise ReplayFormatError(f"{where}: the data's CRC does not match (corrupt record)")
                yield data
                offset += _HEADER.size + length + _FOOTER.size
                number += 1
    except (EOFError, OSError, zlib.error) as exc:
        raise ReplayFormatError(
            f"{path}: truncated or corrupt gzip stream after record {number} ({exc})"
        ) from exc


def write_records(path: Path | str, records: Iterable[bytes], compresslevel: int = 6) -> None:
    """Write a GZIP-compressed TFRecord file atomically; the gzip header holds no name and no time,
    so writing the same records twice gives the same bytes."""
    with (
        atomic_file(Path(path)) as tmp,
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as fh,
    ):
        for data in records:
            header = struct.pack("<Q", len(data))
            fh.write(header + struct.pack("<I", masked_crc32c(header)))
            fh.write(data)
            fh.write(_FOOTER.pack(masked_crc32c(data)))
