"""md5 throughput of `jowa.data.manifest`: what verifying a run against its manifest costs.

`jowa data verify`, `jowa data subsample` and `jowa data finetune-set` hash every file of a run before
reading it, so at paper scale (300 files per run, observation files of 0.2 to 2 GB) hashing is a visible
part of a store job. This measures, with the files in the page cache (so it is md5's speed, not the
disk's): one file at several read sizes, then `md5_files` over several files with 1 thread and with one
thread per usable core. Random bytes, since md5's speed does not depend on content.

    python benchmarks/bench_md5.py                   # 4 files of 512 MB, 3 repeats
    python benchmarks/bench_md5.py --mb 64 --files 2 # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from jowa.data.manifest import md5_file, md5_files

HERE = Path(__file__).resolve().parent
BUFFERS = (64 << 10, 1 << 20, 8 << 20, 32 << 20)


def make_files(directory: Path, count: int, mb: int) -> list[Path]:
    """`count` files of `mb` MB random bytes, reused when already there with that size."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = directory / f"random_{mb}MB_{i}.bin"
        if not path.is_file() or path.stat().st_size != mb * 10**6:
            with open(path, "wb") as fh:
                for _ in range(mb):
                    fh.write(rng.integers(0, 256, 10**6, dtype=np.uint8).tobytes())
        paths.append(path)
    return paths


def timed(fn, repeat: int, mb: float) -> dict:
    """Wall and CPU seconds of each repeat, and MB/s from their medians (CPU: per core busy)."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "mb_per_s": round(mb / statistics.median(wall), 1),
        "mb_per_cpu_s": round(mb / statistics.median(cpu), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="size of each file, MB (10^6 bytes)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "md5.json")
    args = parser.parse_args()
    paths = make_files(HERE / "data" / "md5", args.files, args.mb)
    md5_files(paths)  # into the page cache
    cores = len(os.sched_getaffinity(0))
    one = [
        {"buffer_bytes": size, **timed(lambda size=size: md5_file(paths[0], size), args.repeat, args.mb)}
        for size in BUFFERS
    ]
    total_mb = args.mb * len(paths)
    many = [
        {"threads": workers, **timed(lambda w=workers: md5_files(paths, w), args.repeat, total_mb)}
        for workers in sorted({1, cores})
    ]
    result = {
        "machine": {"cpu": platform.machine(), "cores": cores, "load_avg": os.getloadavg(), **_cpu_model()},
        "file_mb": args.mb,
        "files": len(paths),
        "one_file_by_buffer": one,
        "all_files_by_threads": many,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in one:
        print(
            f"one file, {row['buffer_bytes'] >> 10:>6} KiB reads: {row['mb_per_s']:7.1f} MB/s wall, "
            f"{row['mb_per_cpu_s']:7.1f} MB/s per CPU second"
        )
    for row in many:
        print(
            f"{len(paths)} files, {row['threads']} thread(s):     {row['mb_per_s']:7.1f} MB/s wall, "
            f"{row['mb_per_cpu_s']:7.1f} MB/s per CPU second"
        )
    print(f"load average {os.getloadavg()}")
    print(f"wrote {args.out}")


def _cpu_model() -> dict[str, str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return {"model": line.split(":", 1)[1].strip()}
    except OSError:
        pass
    return {}


if __name__ == "__main__":
    main()
