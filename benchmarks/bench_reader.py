"""Benchmark the DQN-Replay reader and subsampler: inflated MB/s per core and peak RSS.

Generates (once, cached under `benchmarks/data/`) one SpaceInvaders run per row count N with
capacity = steps = N, so each run holds one full observation file of N rows plus a small partial one.
Every measurement then runs in a fresh subprocess of this script, so its peak RSS is its own:

* `reader`     `index_run` + `extract_frames` of every episode (truncated ones too) into a discarding
               sink: the reader's raw throughput;
* `rows`       `index_run` + `extract_rows` of every whole episode: the pass over the small per-row
               arrays (action, reward, terminal, add_count) that every subsample makes, with how often
               each small file was opened and the bytes per row the index keeps;
* `subsample`  `build_store` taking ~10% of the transitions (the paper's ratio) into a scratch store;
* `reference`  `np.load(gzip.open(f))` of the full observation file, as the reference code does;
* `raw`        `igzip.open(f).readinto` of the same file into a `--chunk-rows` buffer, no numpy: the
               inflate call the reader makes, without the reader's bookkeeping;
* `raw-direct` the same through the `io.BufferedReader` inside `IGzipFile`, which skips a copy: the floor
               ISA-L allows, for finding where the reader's time goes.

Throughput is inflated observation bytes (small-array bytes for `rows`; MB = 10^6 bytes) per wall
second and per CPU second of the process (`time.process_time`); the reader is single-threaded, so MB/s
per CPU second is MB/s per core.
Peak RSS is the process's `VmHWM` (see `_peak_rss_bytes`). Files are read once before measuring, so
every figure is with the compressed files in the page cache.

    python benchmarks/bench_reader.py                      # rows 200000 400000, ~10 min the first time
    python benchmarks/bench_reader.py --rows 20000 40000   # quick check
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from isal import igzip

import jowa.data.subsample as subsample
from jowa.data.dopamine.extract import extract_frames, extract_rows
from jowa.data.dopamine.format import STORE_SPECS, NpyGzReader, checkpoint_filename, parse_checkpoint_filename
from jowa.data.dopamine.replay import index_run

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("reader", "rows", "subsample", "reference", "raw", "raw-direct")
RUN = 1  # run number of the generated run in the Dopamine layout `{Game}/{run}/replay_logs`
MB = 1e6
TARGET_MB_PER_S_PER_CORE = 1500.0
TARGET_PEAK_RSS_MB = 1000.0
FRAME_BYTES = 84 * 84


# ---------------------------------------------------------------------------------------------- data


def run_root(data_dir: Path, game: str, rows: int) -> Path:
    """Directory holding the cached run for `rows`, with its generation record and manifest."""
    return data_dir / f"{game}_{rows}"


def replay_dir_of(data_dir: Path, game: str, rows: int) -> Path:
    return run_root(data_dir, game, rows) / game / str(RUN) / "replay_logs"


def generation_params(game: str, rows: int, seed: int, max_episode_steps: int) -> dict[str, Any]:
    """The `generate_run` settings that a cached run must have been made with."""
    return {
        "game": game,
        "steps": rows,
        "capacity": rows,
        "seed": seed,
        "max_episode_steps": max_episode_steps,
    }


def cached_run_ok(data_dir: Path, params: dict[str, Any]) -> bool:
    """True if the run for these settings was generated completely (record written after the run)."""
    root = run_root(data_dir, params["game"], params["steps"])
    record = root / "generate.json"
    if not (record.is_file() and (root / "manifest.tsv").is_file()):
        return False
    if not replay_dir_of(data_dir, params["game"], params["steps"]).is_dir():
        return False
    return json.loads(record.read_text()).get("params") == params


def generate(data_dir: Path, params: dict[str, Any]) -> None:
    """Child process: generate one run, then its manifest, then the record that marks it complete."""
    from jowa.data.generate import generate_run
    from jowa.data.manifest import write_manifest

    root = run_root(data_dir, params["game"], params["steps"])
    shutil.rmtree(root, ignore_errors=True)  # a partial earlier attempt, or other settings
    replay_dir = replay_dir_of(data_dir, params["game"], params["steps"])
    info = generate_run(
        params["game"],
        replay_dir,
        steps_per_run=params["steps"],
        capacity=params["capacity"],
        sticky_actions=0.25,
        max_episode_steps=params["max_episode_steps"],
        seed=params["seed"],
        progress=True,
    )
    write_manifest(replay_dir, root / "manifest.tsv")
    (root / "generate.json").write_text(json.dumps({"params": params, "result": info}, indent=2) + "\n")
    print(
        f"generated {replay_dir}: {info['steps']} steps, {info['episodes']} episodes, "
        f"{info['steps_per_s']} steps/s",
        file=sys.stderr,
    )


def ensure_data(data_dir: Path, all_params: list[dict[str, Any]], jobs: int) -> None:
    """Generate the missing runs, up to `jobs` at a time (each plays ALE on one core)."""
    todo = [p for p in all_params if not cached_run_ok(data_dir, p)]
    for p in all_params:
        if p not in todo:
            print(f"reusing cached run {replay_dir_of(data_dir, p['game'], p['steps'])}", file=sys.stderr)
    if not todo:
        return
    print(
        f"generating {len(todo)} run(s) of {[p['steps'] for p in todo]} steps, {jobs} at a time "
        f"(ALE plays ~1.5k steps/s per core) ...",
        file=sys.stderr,
    )
    env = dict(os.environ)
    if not sys.stderr.isatty():
        env.setdefault("TQDM_MININTERVAL", "15")  # a progress line every 15 s in a log, not every 0.1 s
    running: list[tuple[subprocess.Popen, dict[str, Any]]] = []
    pending = list(todo)
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            p = pending.pop(0)
            cmd = [sys.executable, __file__, "--generate", json.dumps(p), "--data-dir", str(data_dir)]
            running.append((subprocess.Popen(cmd, env=env), p))
        proc, p = running.pop(0)
        if proc.wait() != 0:
            for other, _ in running:
                other.terminate()
            raise SystemExit(f"generating {p} failed (exit {proc.returncode})")
    print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def describe_run(replay_dir: Path) -> dict[str, Any]:
    """Observation file sizes (compressed and inflated) and episode counts of a run."""
    index = index_run(replay_dir)
    files = []
    for f in index.files:
        path = replay_dir / checkpoint_filename("observation", f.suffix)
        with NpyGzReader(path) as reader:
            inflated = int(np.prod(reader.shape)) * reader.dtype.itemsize
        files.append(
            {
                "suffix": f.suffix,
                "add_count": f.add_count,
                "new_rows": f.new_rows,
                "compressed_bytes": path.stat().st_size,
                "inflated_bytes": inflated,
            }
        )
    return {
        "capacity": index.capacity,
        "episodes": len(index.episodes),
        "whole_episodes": len(index.whole_episodes()),
        "rows_in_episodes": sum(e.length for e in index.episodes),
        "observation_files": files,
        "compressed_bytes": sum(f["compressed_bytes"] for f in files),
        "inflated_bytes": sum(f["inflated_bytes"] for f in files),
        "run_bytes_on_disk": sum(p.stat().st_size for p in replay_dir.iterdir()),
    }


def warm_page_cache(paths: Sequence[Path]) -> None:
    """Read the files once so every measurement sees them in the page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.read(1 << 24):
                pass


# ---------------------------------------------------------------------------------------- measuring


def _peak_rss_bytes() -> int:
    """This process's peak RSS: `VmHWM`, which belongs to the address space made by exec.

    `ru_maxrss` is also reported, but Linux carries into it the peak of the address space replaced by
    exec, which after a vfork-spawned subprocess is the parent's; `VmHWM` has no such carry-over.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _obs_path(replay_dir: Path, suffix: int) -> Path:
    return replay_dir / checkpoint_filename("observation", suffix)


def measure_reader(args: argparse.Namespace) -> dict[str, Any]:
    """`index_run` + `extract_frames` of all episodes into a sink that only counts rows."""
    counted = {"bytes": 0, "rows": 0}

    def sink(block: np.ndarray, dest: int) -> None:
        counted["rows"] += len(block)

    def on_bytes(n: int) -> None:
        counted["bytes"] += n

    t_index = time.perf_counter()
    index = index_run(args.replay_dir)
    index_s = time.perf_counter() - t_index
    extract_frames(index, index.episodes, sink, chunk_rows=args.chunk_rows, on_bytes=on_bytes)
    return {
        "inflated_bytes": counted["bytes"],
        "rows_delivered": counted["rows"],
        "rows_inflated": counted["bytes"] // FRAME_BYTES,
        "episodes": len(index.episodes),
        "index_s": round(index_s, 4),
        "chunk_rows": args.chunk_rows,
    }


def measure_rows(args: argparse.Namespace) -> dict[str, Any]:
    """`index_run` + `extract_rows` of every whole episode, counting opens of the run's files.

    Opens are counted from Python's `open` audit events; a small file's inflated size follows from its
    kind and the capacity (`add_count` files hold one int64).
    """
    opens: Counter[str] = Counter()

    def count(event: str, hook_args: tuple) -> None:
        if event == "open" and isinstance(hook_args[0], str | os.PathLike):
            parsed = parse_checkpoint_filename(Path(hook_args[0]).name)
            if parsed is not None:
                opens[parsed[0]] += 1

    sys.addaudithook(count)  # this process makes one measurement and exits: the hook needs no removal
    index = index_run(args.replay_dir)
    episodes = index.whole_episodes()
    rows = extract_rows(index, episodes)
    itemsize = {kind: dtype.itemsize for kind, (dtype, _) in STORE_SPECS.items()} | {"add_count": 8}
    small = {kind: n for kind, n in opens.items() if kind in ("action", "reward", "terminal", "add_count")}
    inflated = sum(
        n * itemsize[kind] * (1 if kind == "add_count" else index.capacity) for kind, n in small.items()
    )
    held = sum(h.actions.nbytes + h.rewards.nbytes for h in index.held.values()) + index.terminal_rows.nbytes
    held_rows = sum(f.new_rows for f in index.files)
    return {
        "inflated_bytes": inflated,
        "files": index.num_files,
        "small_file_opens": dict(small),
        "small_file_opens_per_file": round(sum(small.values()) / (4 * index.num_files), 2),
        "observation_file_opens": opens["observation"],
        "rows_held": held_rows,
        "held_bytes_per_row": round(held / held_rows, 3),
        "rows_extracted": len(rows.actions),
        "episodes": len(episodes),
    }


def measure_subsample(args: argparse.Namespace) -> dict[str, Any]:
    """`build_store` of ~`--fraction` of the run's transitions into a scratch store, then removed."""
    counted = {"bytes": 0}
    original = subsample.extract_frames

    def counting_extract_frames(*a: Any, on_bytes: Callable[[int], None] | None = None, **kw: Any) -> None:
        def both(n: int) -> None:
            counted["bytes"] += n
            if on_bytes is not None:
                on_bytes(n)

        original(*a, on_bytes=both, **kw)

    subsample.extract_frames = counting_extract_frames  # count inflated bytes without touching the module
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        meta = subsample.build_store(
            game=args.game,
            replay_dirs={RUN: Path(args.replay_dir)},
            manifests={RUN: Path(args.manifest)},
            out=scratch / "store",
            transitions_per_game=args.transitions,
            seed=args.seed,
            progress=False,
        )
        frames_bytes = (scratch / "store" / "frames.npy").stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "inflated_bytes": counted["bytes"],
        "transitions_requested": args.transitions,
        "transitions_stored": meta["transitions"],
        "episodes_stored": meta["episodes"],
        "store_frames_bytes": frames_bytes,
    }


def measure_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The reference's way: `np.load(gzip.open(f))` of the whole observation file of suffix 0."""
    with gzip.open(_obs_path(Path(args.replay_dir), 0)) as fh:
        array = np.load(fh)
    return {"inflated_bytes": int(array.nbytes), "shape": list(array.shape)}


def measure_raw(args: argparse.Namespace) -> dict[str, Any]:
    """`igzip.open(f).readinto` of the suffix-0 observation file, `--chunk-rows` at a time, no numpy.

    This is the call `NpyGzReader` makes. `IGzipFile` (like `gzip.GzipFile`) has no `readinto` of its
    own: `io.BufferedIOBase.readinto` calls `read(n)`, which builds a new bytes object, then copies it.
    """
    return _read_raw(args, direct=False)


def measure_raw_direct(args: argparse.Namespace) -> dict[str, Any]:
    """As `raw`, but calling `readinto` of the `io.BufferedReader` inside `IGzipFile`: inflate, no copy."""
    return _read_raw(args, direct=True)


def _read_raw(args: argparse.Namespace, direct: bool) -> dict[str, Any]:
    view = memoryview(bytearray(args.chunk_rows * FRAME_BYTES))
    total = 0
    with igzip.open(_obs_path(Path(args.replay_dir), 0), "rb") as fh:
        readinto = fh._buffer.readinto if direct else fh.readinto
        while n := readinto(view):
            total += n
    return {"inflated_bytes": total, "chunk_rows": args.chunk_rows}


MEASURES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "reader": measure_reader,
    "rows": measure_rows,
    "subsample": measure_subsample,
    "reference": measure_reference,
    "raw": measure_raw,
    "raw-direct": measure_raw_direct,
}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: one measurement, timed in wall and CPU seconds, with this process's peak RSS."""
    baseline_rss = _rss_bytes()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    extra = MEASURES[args.measure](args)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    inflated = extra.pop("inflated_bytes")
    return {
        "kind": args.measure,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "inflated_MB": round(inflated / MB, 2),
        "MB_per_s_wall": round(inflated / MB / wall, 1),
        "MB_per_s_cpu": round(inflated / MB / cpu, 1),
        "peak_rss_MB": round(_peak_rss_bytes() / MB, 1),
        "ru_maxrss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1),
        "rss_before_MB": round(baseline_rss / MB, 1),
        **extra,
    }


def run_measurement(kind: str, args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return the JSON line it prints."""
    root = run_root(args.data_dir, args.game, rows)
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        kind,
        "--replay-dir",
        str(replay_dir_of(args.data_dir, args.game, rows)),
        "--game",
        args.game,
        "--seed",
        str(args.seed),
        "--chunk-rows",
        str(args.chunk_rows),
        "--transitions",
        str(max(1, round(rows * args.fraction))),
        "--manifest",
        str(root / "manifest.tsv"),
        "--scratch",
        str(args.data_dir / f"scratch-{os.getpid()}"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement {kind} at {rows} rows failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median times over the repeats (throughput from those), the spread, the highest peak RSS."""
    wall = statistics.median(r["wall_s"] for r in runs)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    inflated = runs[0]["inflated_MB"]
    return {
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "inflated_MB": inflated,
        "MB_per_s_wall": round(inflated / wall, 1),
        "MB_per_s_cpu": round(inflated / cpu, 1),
        "MB_per_s_cpu_min_max": [min(r["MB_per_s_cpu"] for r in runs), max(r["MB_per_s_cpu"] for r in runs)],
        "peak_rss_MB": max(r["peak_rss_MB"] for r in runs),
        "repeats": len(runs),
    }


# ------------------------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    import isal

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_GB": round(mem_kb * 1024 / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "isal": isal.__version__,
    }


def verdict(results: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """Reader MB/s per core against the target; peak RSS of reader and subsampler across sizes."""
    out: dict[str, Any] = {
        "target_MB_per_s_per_core": TARGET_MB_PER_S_PER_CORE,
        "target_peak_rss_MB": TARGET_PEAK_RSS_MB,
        "flat_rule": "peak RSS at the largest N exceeds that at the smallest by at most max(20 MB, 10%)",
    }
    per_core = {n: results[str(n)]["measurements"].get("reader", {}).get("MB_per_s_cpu") for n in rows}
    if all(v is not None for v in per_core.values()):
        out["reader_MB_per_s_per_core"] = {str(n): v for n, v in per_core.items()}
        out["reader_meets_throughput"] = min(per_core.values()) >= TARGET_MB_PER_S_PER_CORE
    floor = {n: results[str(n)]["measurements"].get("raw-direct", {}).get("MB_per_s_cpu") for n in rows}
    if all(v is not None for v in [*per_core.values(), *floor.values()]):
        out["reader_share_of_inflate_floor"] = {str(n): round(per_core[n] / floor[n], 3) for n in rows}
    lo, hi = min(rows), max(rows)
    for kind in ("reader", "rows", "subsample", "reference"):
        rss = {n: results[str(n)]["measurements"].get(kind, {}).get("peak_rss_MB") for n in rows}
        if any(v is None for v in rss.values()):
            continue
        entry: dict[str, Any] = {"peak_rss_MB": {str(n): v for n, v in rss.items()}}
        if hi > lo:
            entry["rows_ratio"] = round(hi / lo, 2)
            entry["rss_ratio"] = round(rss[hi] / rss[lo], 3)
            slope = (rss[hi] - rss[lo]) * MB / (hi - lo)  # bytes of peak RSS per extra row in the file
            entry["rss_bytes_per_row"] = round(slope, 1)
            entry["peak_rss_MB_at_1M_rows"] = round(rss[hi] + slope * (1_000_000 - hi) / MB, 1)
        if kind != "reference":
            if hi > lo:
                entry["flat"] = rss[hi] - rss[lo] <= max(20.0, 0.1 * rss[lo])
            entry["under_target"] = max(rss.values()) < TARGET_PEAK_RSS_MB
        out[f"{kind}_rss"] = entry
    return out


def print_table(results: dict[str, Any], rows: list[int]) -> None:
    header = (
        f"{'rows':>8} {'kind':<10} {'wall s':>8} {'cpu s':>8} {'inflated MB':>12} "
        f"{'MB/s wall':>10} {'MB/s cpu':>10} {'(min-max)':>11} {'peak RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for n in rows:
        for kind, m in results[str(n)]["measurements"].items():
            spread = "{:.0f}-{:.0f}".format(*m["MB_per_s_cpu_min_max"])
            print(
                f"{n:>8} {kind:<10} {m['wall_s']:>8.2f} {m['cpu_s']:>8.2f} {m['inflated_MB']:>12.1f} "
                f"{m['MB_per_s_wall']:>10.0f} {m['MB_per_s_cpu']:>10.0f} {spread:>11} "
                f"{m['peak_rss_MB']:>12.1f}"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200_000, 400_000], help="rows per generated run")
    p.add_argument("--game", default="SpaceInvaders")
    p.add_argument("--seed", type=int, default=0, help="generation seed, and the subsampler's seed")
    p.add_argument("--max-episode-steps", type=int, default=27_000)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--repeat", type=int, default=5, help="measurements per kind and size (median kept)")
    p.add_argument("--fraction", type=float, default=0.1, help="share of transitions the subsampler takes")
    p.add_argument("--chunk-rows", type=int, default=32, help="rows per inflate call (reader and raw)")
    p.add_argument("--gen-jobs", type=int, default=0, help="runs generated at once (0: one per core)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reader.json")
    # internal: the child processes
    p.add_argument("--generate", help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--replay-dir", help=argparse.SUPPRESS)
    p.add_argument("--transitions", type=int, help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.generate:
        generate(args.data_dir, json.loads(args.generate))
        return
    if args.measure:
        print(json.dumps(measure(args)))
        return

    rows = sorted(set(args.rows))
    all_params = [generation_params(args.game, n, args.seed, args.max_episode_steps) for n in rows]
    jobs = args.gen_jobs or min(len(rows), len(os.sched_getaffinity(0)))
    ensure_data(args.data_dir, all_params, jobs)
    os.sync()  # no writeback of freshly generated files during the measurements

    results: dict[str, Any] = {}
    for n in rows:
        replay_dir = replay_dir_of(args.data_dir, args.game, n)
        warm_page_cache(sorted(replay_dir.iterdir()))
        run = describe_run(replay_dir)
        record = json.loads((run_root(args.data_dir, args.game, n) / "generate.json").read_text())["result"]
        measurements, raw_runs = {}, {}
        for kind in args.kinds:
            runs = []
            for i in range(args.repeat):
                r = run_measurement(kind, args, n)
                runs.append(r)
                print(
                    f"  {n} rows  {kind:<9} #{i + 1}: {r['wall_s']:.2f} s wall, {r['MB_per_s_cpu']:.0f} "
                    f"MB/s per core, peak RSS {r['peak_rss_MB']:.0f} MB",
                    file=sys.stderr,
                )
            measurements[kind] = summarize(runs)
            raw_runs[kind] = runs
        results[str(n)] = {
            "replay_dir": str(
                replay_dir.relative_to(ROOT) if replay_dir.is_relative_to(ROOT) else replay_dir
            ),
            "generation": {k: record[k] for k in ("steps", "episodes", "seed", "steps_per_s", "suffixes")},
            "files": run,
            "measurements": measurements,
            "runs": raw_runs,
        }

    report = {
        "benchmark": "reader",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "settings": {
            "game": args.game,
            "rows": rows,
            "seed": args.seed,
            "max_episode_steps": args.max_episode_steps,
            "repeat": args.repeat,
            "subsample_fraction": args.fraction,
            "chunk_rows": args.chunk_rows,
            "units": "MB = 10^6 bytes; throughput = inflated observation bytes per second",
        },
        "results": results,
        "verdict": verdict(results, rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, rows)
    print(json.dumps(report["verdict"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
