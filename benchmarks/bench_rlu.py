"""Benchmark reading RL Unplugged shards: frames/s per core of indexing and of read + decode + store write.

Plays one SpaceInvaders run with ale-py (real frames, so PNG sizes are realistic), writes it in RL
Unplugged's layout (`jowa.data.rlu.run.write_rlu_run`), and measures in this process:

* `index`      `index_rlu_run`: inflate + CRC32C + protobuf parse of every record, no PNG decode;
* `store`      `build_store` of every whole episode: a second read of the shards, PNG decode, store write;
* `tfrecord`   (if the PyPI `tfrecord` package is importable) its reader over the same shards, records
               only, to compare our framing + CRC with a library's.

Frames/s per core is frames per CPU second of this (single-threaded) process. The projection scales the
figures to the paper: 15 games x 2 runs x ~50M frames indexed, 15 x 10M frames decoded and stored.

    python benchmarks/bench_rlu.py                 # 20000 steps, a few minutes
    python benchmarks/bench_rlu.py --steps 5000    # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jowa.data.dopamine.extract import read_episodes
from jowa.data.dopamine.replay import index_run
from jowa.data.generate import generate_run
from jowa.data.manifest import write_manifest
from jowa.data.rlu.run import index_rlu_run, write_rlu_run
from jowa.data.subsample import build_store

PAPER_RUN_FRAMES = 50_000_000  # a DQN-Replay run: 50 checkpoints of 1M steps
PAPER_RUNS = 15 * 2
PAPER_STORED_FRAMES = 15 * 10_000_000  # subsample.transitions_per_game x pretraining games


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def tfrecord_package(shards: list[Path]) -> int | None:
    try:
        from tfrecord.reader import tfrecord_iterator  # type: ignore[import-not-found]
    except ImportError:
        return None
    return sum(1 for path in shards for _ in tfrecord_iterator(str(path), compression_type="gzip"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rlu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dopamine = root / "dopamine"
        generate_run(
            "SpaceInvaders", dopamine, steps_per_run=args.steps, capacity=max(args.steps // 10, 100),
            sticky_actions=0.25, max_episode_steps=27_000, seed=0, progress=False,
        )  # fmt: skip
        rlu = root / "rlu"
        write_rlu_run(read_episodes(dopamine), rlu, 1, shards=index_run(dopamine).num_files)
        write_manifest(rlu, root / "rlu.tsv")
        compressed = sum(p.stat().st_size for p in rlu.iterdir())
        run, index_wall, index_cpu = timed(lambda: index_rlu_run(rlu))
        frames = sum(e.length for e in run.episodes)
        whole = sum(e.length for e in run.whole_episodes())
        meta, store_wall, store_cpu = timed(
            lambda: build_store(
                game="SpaceInvaders",
                replay_dirs={1: rlu},
                manifests={1: root / "rlu.tsv"},
                out=root / "store",
                transitions_per_game=whole,
                seed=0,
                progress=False,
            )  # fmt: skip
        )
        records, tfr_wall, tfr_cpu = timed(lambda: tfrecord_package(run.shards))
        shutil.rmtree(root / "store")
    index_fps = frames / index_cpu
    store_fps = meta["transitions"] / store_cpu
    hours = (PAPER_RUNS * PAPER_RUN_FRAMES / index_fps + PAPER_STORED_FRAMES / store_fps) / 3600
    result = {
        "machine": platform.machine(),
        "frames": frames,
        "compressed_bytes_per_frame": round(compressed / frames, 1),
        "index": {"wall_s": round(index_wall, 3), "frames_per_cpu_s": round(index_fps)},
        "store": {
            "frames": meta["transitions"],
            "wall_s": round(store_wall, 3),
            "frames_per_cpu_s": round(store_fps),
        },
        "tfrecord_package": None
        if records is None
        else {"records": records, "wall_s": round(tfr_wall, 3), "frames_per_cpu_s": round(frames / tfr_cpu)},
        "paper_projection": {
            "index_frames": PAPER_RUNS * PAPER_RUN_FRAMES,
            "stored_frames": PAPER_STORED_FRAMES,
            "core_hours": round(hours, 1),
            "hours_on_16_cores": round(hours / 16, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
