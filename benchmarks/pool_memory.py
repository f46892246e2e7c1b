"""Host memory of building the world model's token pool, measured at a scaled size and extrapolated.

Writes `--stores` token-only stores of `--steps` steps each (`jowa.data.token_stores`: real store
layouts, sparse frames, random uint16 tokens), then in a fresh process opens them as `jowa pretrain`
does (`jowa.train.segments.open_token_pool`) while a thread samples the process's anonymous resident
memory (RssAnon: the heap, not the page cache of the memory-mapped inputs) every 5 ms. One JSON line:

* `pool_bytes`: the pool's own arrays; `build_peak_extra_bytes`: the peak anonymous memory during the
  build above the memory before it, minus the pool's host-resident arrays (zero for a GPU pool), or
  numpy's traced peak (`numpy_peak_bytes`, exact) where the sampler missed a short-lived chunk; this is
  what building costs beside the pool. `bytes_per_step` x the paper's ~150M steps gives
  `paper_pool_gb`; the extra is independent of the size (one chunk of `FILL_ROWS` rows and one store's
  segment index), so `paper_host_peak_gb` = host-resident pool + extra at 150M steps.

    python benchmarks/pool_memory.py --stores 15 --steps 400000 --out benchmarks/results/pool_memory.jsonl

On a GPU machine the pool goes to the GPU when it fits (`--device cuda`), and its host peak is the extra
alone. Not run in CI (the test tests/test_pool_memory.py checks the same bound with tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

PAPER_STEPS = 150_000_000
ROOT = Path(__file__).resolve().parent.parent


def rss_anon() -> int:
    """This process's anonymous resident bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def measure(directory: Path, stores: int, device: str) -> dict:
    """Open the pool in this process and report its memory (run in a fresh process)."""
    import torch
    from train_step import commit  # this directory is on the path of a script run from it

    from jowa.train.runtime import Runtime
    from jowa.train.segments import open_token_pool

    paths = [directory / f"store{i}" for i in range(stores)]
    tokens = [directory / f"store{i}.tokens.npy" for i in range(stores)]
    rt = Runtime(torch.device(device), 0, 1, "bf16", compile=False)
    peak, running = [rss_anon()], True
    before = peak[0]

    def sample() -> None:
        while running:
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    start = time.perf_counter()
    pool = open_token_pool(paths, tokens, rt, length=8, stride=4).pool
    seconds = time.perf_counter() - start
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    running = False
    sampler.join()
    peak[0] = max(peak[0], rss_anon())
    arrays = [pool.tokens, pool.actions, pool.rewards, pool.terminals, pool.starts, pool.valid, pool.tasks]
    pool_bytes = sum(a.numel() * a.element_size() for a in arrays)
    on_host = pool_bytes if pool.device.type == "cpu" else 0
    steps = len(pool.actions)
    extra = max(peak[0] - before - on_host, numpy_peak)  # a sample can miss a short-lived chunk
    per_step = pool_bytes / steps
    return {
        "part": "pool_memory", "pool_device": str(pool.device), "steps": steps, "segments": len(pool),
        "build_s": seconds, "pool_bytes": pool_bytes, "bytes_per_step": per_step,
        "build_peak_extra_bytes": extra, "numpy_peak_bytes": numpy_peak, "host_peak_bytes": on_host + extra,
        "paper_steps": PAPER_STEPS, "paper_pool_gb": per_step * PAPER_STEPS / 1e9,
        "paper_host_peak_gb": ((per_step * PAPER_STEPS if on_host else 0) + extra) / 1e9,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, "commit": commit(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", type=int, default=15, help="stores (games) in the pool")
    parser.add_argument("--steps", type=int, default=400_000, help="steps per store")
    parser.add_argument("--device", default="cpu", help="the run's device (a GPU pool if it fits)")
    parser.add_argument("--out", type=Path, help="JSON lines, appended")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.stores, args.device)), flush=True)
        return
    from jowa.data.token_stores import write_token_store

    with tempfile.TemporaryDirectory(prefix="pool_memory_") as tmp:
        for i in range(args.stores):
            write_token_store(Path(tmp) / f"store{i}", args.steps, i)
        command = [sys.executable, __file__, "--stores", str(args.stores), "--device", args.device]
        proc = subprocess.run(
            [*command, "--measure", tmp], capture_output=True, text=True, check=True, cwd=ROOT
        )
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
