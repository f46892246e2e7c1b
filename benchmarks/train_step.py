"""Training throughput: our stage-2 step per size and batch, the data path that feeds it, and tokenize.

Three parts, one JSON line per measurement appended to one file (`benchmarks/results/train_step[_TAG].jsonl`)
as soon as it is measured (flushed), so a run stopped by a time limit keeps what it measured:

* `step`: `jowa.train.world_step.WorldTrainer.step` in stage 2 exactly as `jowa pretrain` runs it
  (random tokens in; world losses x supervised weight + C51 TD + CQL; backward; global-norm clip; AdamW,
  fused on a GPU; bf16 autocast and torch.compile as params.yaml says). Each configuration starts from a
  fresh Dynamo (`torch._dynamo.reset()`) and the trainer compiles with static shapes, so no point times
  a symbolic-batch graph that `jowa pretrain` never runs. Timing as the reference's script: the mean
  step of `--repeats` steps run back to back with one synchronisation at the end, after `--warmup`
  steps. Per size and batch: step time, samples/s, tokens/s, peak GPU memory and MFU under two FLOP
  counts, stated, not measured: `mfu` = 6 x N x tokens, N the trainable parameters outside embedding
  tables (the convention of the reference timing script in shared/bench, so the two MFUs compare), and
  `mfu_real` = each head at the positions it runs on (observation head at 288 of 296 tokens, reward and
  end heads at the 8 actions, the Q head at its 8 positions, the target head forward only) plus the
  causal attention products, 6 x layers x T^2 x width per sample. Both against `--peak-tflops`
  (default 989, the dense bf16 figure of both H100 and H200).
  `--levers` times the same points with issue 19's levers (`jowa.models.world_action.Levers`) switched:
  `all` (the default, what `jowa pretrain` runs), `none` (the step as before issue 19) or `no-NAME`
  (all but one); `--levers-batches` limits the variants other than `all` to some batches. Each record
  carries its variant (`levers`) and the settings (`lever_settings`).
* `data`: segments/s of `DevicePool.draw` at the step's batch from a pool of `--pool-steps` synthetic
  steps, GPU-resident and in host memory (gathered, pinned, copied), as `jowa.train.segments` chooses.
* `tokenize`: frames/s of the tokenizer's encoder at `jowa tokenize`'s batch (1024), and the hours the
  paper's ~150M pretraining frames would take at that rate.

    python benchmarks/train_step.py                                   # on a GPU: params.yaml's sizes
    python benchmarks/train_step.py --params config/smoke.yaml --sizes tiny-s tiny-m --batches 16 64 \
        --pool-steps 200000 --tag cpu                                 # the CPU run (seconds)
    python benchmarks/train_step.py --parts step --sizes 40M --levers all none --levers-batches 256

Each record carries `impl: ours`, the GPU's name, the torch version and the commit measured
(`JOWA_COMMIT`, else `git rev-parse HEAD`).

Not run in CI. Runs on a CPU with any sizes, but CPU figures say nothing about the GPU targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from jowa.core.config import load_params
from jowa.core.games import PRETRAIN_GAMES, task_id
from jowa.data.loader import SegmentPool
from jowa.data.store import segment_index
from jowa.models.batch import Batch
from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA, Levers
from jowa.train.pretrain import model_config
from jowa.train.runtime import Runtime, peak_memory_gb
from jowa.train.segments import DevicePool
from jowa.train.train_tokenizer import tokenizer_config
from jowa.train.world_step import Stage, WorldTrainer

ROOT = Path(__file__).resolve().parent.parent
PAPER_FRAMES = 150_000_000
LEVER_NAMES = {"fused_qkv": "fused_qkv", "sliced_heads": "sliced_heads", "chunked_obs_loss": "obs_loss_chunk"}
LEVER_VARIANTS = ["all", "none", *(f"no-{name}" for name in LEVER_NAMES)]


def levers(variant: str) -> Levers:
    """The Levers of a `--levers` variant: all on, none on, or all but one."""
    if variant == "all":
        return Levers()
    if variant == "none":
        return Levers.none()
    field = LEVER_NAMES[variant.removeprefix("no-")]
    return dataclasses.replace(Levers(), **{field: getattr(Levers.none(), field)})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[int], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls `fn(step)` (steps counted from 1), after `warmup` untimed ones."""
    for step in range(1, warmup + 1):
        fn(step)
    sync(device)
    seconds = []
    for step in range(warmup + 1, warmup + repeats + 1):
        start = time.perf_counter()
        fn(step)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def mean_seconds(fn: Callable[[int], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Mean seconds of `repeats` calls run back to back with one synchronisation at the end, after
    `warmup` untimed ones: the reference timing script's throughput convention."""
    for step in range(1, warmup + 1):
        fn(step)
    sync(device)
    start = time.perf_counter()
    for step in range(warmup + 1, warmup + repeats + 1):
        fn(step)
    sync(device)
    return (time.perf_counter() - start) / repeats


def non_embedding_parameters(model: JOWA) -> int:
    embedded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in embedded)


def real_flops_per_sample(model: JOWA) -> int:
    """Training FLOPs of one segment with every part at the positions it runs on (see the docstring)."""
    config = model.config

    def params(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    tokens = config.max_tokens
    obs, actions, q = (len(getattr(model, f"layout_{name}")) for name in ("obs_head", "action", "q"))
    linear = 6 * (
        tokens * params(model.transformer)
        + obs * params(model.observation_head)
        + actions * (params(model.reward_head) + params(model.end_head))
        + q * params(model.q_head)
    )
    target = 2 * q * params(model.q_target_head)
    attention = 6 * config.layers * tokens * tokens * config.width
    return linear + target + attention


def random_batch(batch: int, config: Any, device: torch.device, generator: torch.Generator) -> Batch:
    t, k = config.max_blocks, config.tokens_per_block - 1
    tasks = torch.tensor([task_id(PRETRAIN_GAMES[i % len(PRETRAIN_GAMES)]) for i in range(batch)])
    return Batch(
        obs_tokens=torch.randint(config.obs_vocab, (batch, t, k), generator=generator),
        actions=torch.randint(18, (batch, t), generator=generator),
        rewards=torch.randint(-1, 2, (batch, t), generator=generator).float(),
        ends=torch.zeros(batch, t, dtype=torch.long),
        mask=torch.ones(batch, t, dtype=torch.bool),
        tasks=tasks,
    ).to(device)


def bench_step(
    args: argparse.Namespace, params: Any, rt: Runtime, size: str, batch: int, variant: str = "all"
) -> dict[str, Any]:
    torch._dynamo.reset()  # a fresh Dynamo per configuration: this point compiles its own static graph
    pretrain = params.pretrain
    config = model_config(params.models[size], pretrain, params.tokenizer.arch.vocab_size, 36)
    torch.manual_seed(0)
    model = JOWA(config, levers=levers(variant))
    trainer = WorldTrainer(model, rt, pretrain, micro_batch=batch)
    trainer.enter(Stage("critic", True, pretrain.stage2_world_lr, pretrain.supervised_weight))
    data = random_batch(batch, config, rt.device, torch.Generator().manual_seed(0))
    if rt.on_gpu:
        torch.cuda.reset_peak_memory_stats(rt.device)
    seconds = mean_seconds(functools.partial(trainer.step, batch=data), rt.device, args.warmup, args.repeats)
    tokens = batch * config.max_tokens
    n = non_embedding_parameters(model)
    six_nt = 6 * n * tokens
    real = real_flops_per_sample(model) * batch
    peak = args.peak_tflops * 1e12
    record = {
        "part": "step", "impl": "ours", "size": size, "batch": batch, "tokens_per_sample": config.max_tokens,
        "non_embedding_params": n, "step_ms": seconds * 1e3,
        "samples_per_s": batch / seconds, "tokens_per_s": tokens / seconds,
        "model_tflops": six_nt / seconds / 1e12, "real_tflops": real / seconds / 1e12,
        "mfu": six_nt / seconds / peak if rt.on_gpu else None,
        "mfu_real": real / seconds / peak if rt.on_gpu else None,
        "peak_tflops": args.peak_tflops, "peak_mem_gb": peak_memory_gb(rt.device),
        "peak_mem_gib": peak_memory_gb(rt.device) * 1e9 / 2**30,  # the reference script's unit
        "precision": rt.precision if rt.on_gpu else "fp32", "compile": rt.compile,
        "warmup": args.warmup, "repeats": args.repeats,
        "levers": variant, "lever_settings": dataclasses.asdict(model.levers),
    }  # fmt: skip
    del trainer, model, data
    if rt.on_gpu:
        torch.cuda.empty_cache()
    return record


@dataclass
class SyntheticStore:
    """What SegmentPool reads of a store, for a pool of any size without writing one to disk."""

    path: Path
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    episode_starts: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    def segments(self, length: int, stride: int) -> np.ndarray:
        return segment_index(self.episode_starts, length, stride)


def synthetic_pool(steps: int, length: int, stride: int, device: torch.device) -> SegmentPool:
    rng = np.random.default_rng(0)
    ends = np.cumsum(rng.integers(500, 5000, size=steps // 500 + 1))
    starts = np.concatenate([[0], ends[ends < steps], [steps]])
    store = SyntheticStore(
        path=Path("synthetic"), actions=rng.integers(0, 18, steps, dtype=np.uint8),
        rewards=rng.integers(-1, 2, steps).astype(np.float32),
        terminals=np.isin(np.arange(steps), starts[1:] - 1).astype(np.uint8),
        episode_starts=starts, meta={"task_id": 0},
    )  # fmt: skip
    tokens = rng.integers(0, 1024, (steps, 36), dtype=np.uint16)
    return SegmentPool([store], [tokens], length=length, stride=stride, device=device)  # type: ignore[list-item]


def bench_data(args: argparse.Namespace, params: Any, rt: Runtime, batch: int) -> list[dict[str, Any]]:
    records = []
    places = [rt.device, torch.device("cpu")] if rt.on_gpu else [torch.device("cpu")]
    for place in places:
        start = time.perf_counter()
        settings = params.pretrain
        pool = DevicePool(
            synthetic_pool(args.pool_steps, settings.segment_length, settings.segment_stride, place), [], rt
        )
        built = time.perf_counter() - start
        draw = functools.partial(pool.draw, batch, 0)
        seconds = timed(draw, rt.device, args.warmup, args.repeats * 5)
        records.append({
            "part": "data", "pool": "gpu-resident" if place.type == "cuda" else "host (pinned copy)",
            "pool_steps": args.pool_steps, "segments": len(pool), "batch": batch, "build_s": built,
            "draw_ms": statistics.median(seconds) * 1e3, "segments_per_s": batch / statistics.median(seconds),
        })  # fmt: skip
        del pool
    return records


def bench_tokenize(args: argparse.Namespace, params: Any, rt: Runtime) -> dict[str, Any]:
    tokenizer = Tokenizer(tokenizer_config(params.tokenizer)).to(rt.device).eval()
    frames = torch.randint(0, 256, (args.tokenize_batch, 1, 84, 84), dtype=torch.uint8, device=rt.device)

    def encode(step: int) -> None:
        with torch.no_grad(), rt.autocast():
            tokenizer.encode(frames.float().div_(255)).cpu()

    seconds = statistics.median(timed(encode, rt.device, 1, args.repeats))
    rate = args.tokenize_batch / seconds
    return {
        "part": "tokenize", "batch": args.tokenize_batch, "frames_per_s": rate,
        "paper_frames": PAPER_FRAMES, "paper_hours": PAPER_FRAMES / rate / 3600,
    }  # fmt: skip


def commit() -> str:
    """The commit measured: `JOWA_COMMIT` (set by the GPU session, whose copy has no .git), else git's."""
    if os.environ.get("JOWA_COMMIT"):
        return os.environ["JOWA_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(rt: Runtime) -> dict[str, Any]:
    """What every record carries about where and what was measured."""
    return {
        "device": str(rt.device), "gpu": torch.cuda.get_device_name(rt.device) if rt.on_gpu else None,
        "torch": torch.__version__, "python": platform.python_version(), "commit": commit(),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }  # fmt: skip


def emit(out: IO[str], record: dict[str, Any]) -> None:
    """One JSON line, written and flushed at once: a run killed later keeps it."""
    line = json.dumps(record)
    out.write(line + "\n")
    out.flush()
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", type=Path, default=ROOT / "params.yaml", help="sizes, tokenizer, pretrain"
    )
    parser.add_argument("--sizes", nargs="+", help="keys of the params file's models (default: all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parts = ["step", "data", "tokenize"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps")
    parser.add_argument(
        "--pool-steps", type=int, default=20_000_000, help="steps of the synthetic token pool"
    )
    parser.add_argument("--tokenize-batch", type=int, default=1024)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--no-compile", action="store_true", help="ignore params' compile: eager step")
    parser.add_argument(
        "--levers", nargs="+", choices=LEVER_VARIANTS, default=["all"],
        help="step variants: issue 19's levers all on (default), none, or all but one",
    )  # fmt: skip
    parser.add_argument(
        "--levers-batches", type=int, nargs="+", help="batches of the variants other than all (default: all)"
    )
    parser.add_argument("--device", help="default: the GPU if any, else the CPU")
    parser.add_argument("--tag", help="suffix of the result file")
    parser.add_argument(
        "--out", type=Path, help="JSON lines, appended (default: benchmarks/results/train_step[_TAG].jsonl)"
    )
    args = parser.parse_args()
    params = load_params(args.params)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    compile = params.pretrain.compile and not args.no_compile and device.type == "cuda"
    rt = Runtime(device, 0, 1, params.pretrain.precision, compile)
    about = machine(rt) | {"params": str(args.params)}
    path = (
        args.out or ROOT / "benchmarks" / "results" / f"train_step{'_' + args.tag if args.tag else ''}.jsonl"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        if "step" in args.parts:
            for size in args.sizes or list(params.models):
                for variant in args.levers:
                    for batch in args.batches:
                        if variant == "all" or not args.levers_batches or batch in args.levers_batches:
                            emit(out, bench_step(args, params, rt, size, batch, variant) | about)
        if "data" in args.parts:
            for record in bench_data(args, params, rt, max(args.batches)):
                emit(out, record | about)
        if "tokenize" in args.parts:
            emit(out, bench_tokenize(args, params, rt) | about)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
