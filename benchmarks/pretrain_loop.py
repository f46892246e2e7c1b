"""The real training loop's rate: `jowa pretrain` over a few hundred steps, against the step benchmark.

`benchmarks/train_step.py` times `WorldTrainer.step` on a batch built once on the device; `jowa
pretrain` also draws every step's segments from the pool, logs, and checkpoints. This runs the real
command (a subprocess, as Snakemake runs it) on synthetic token stores (`jowa.data.token_stores`) and a
randomly initialised tokenizer file, in stage 2 from the first step (`critic_after: 0`), with the pool
on the GPU when it fits, and reads the rate from its `metrics.jsonl`: the median samples/s of the
logging intervals after the first (which holds the compilation). Within 5 % of the step benchmark's
samples/s at the same size and batch, the loop adds no hidden host syncs (issue 19, item 3).

    python benchmarks/pretrain_loop.py --size 150M --batch 64 --steps 300 --out loop.jsonl
    python benchmarks/pretrain_loop.py --params config/smoke.yaml --size tiny-s --batch 8 --steps 20 \
        --log-every 5 --store-steps 20000                               # the CPU check (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_step import commit  # this directory is on the path of a script run from it

from jowa.core.config import load_params
from jowa.data.token_stores import write_token_store
from jowa.models.tokenizer import Tokenizer
from jowa.train.train_tokenizer import tokenizer_config
from jowa.weights.tokenizer_checkpoints import save_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--size", default="150M", help="a key of the params file's models")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--stores", type=int, default=15, help="synthetic stores (games)")
    parser.add_argument("--store-steps", type=int, default=200_000, help="steps per store")
    parser.add_argument("--out", type=Path, help="JSON lines, appended")
    args = parser.parse_args()
    params = load_params(args.params)
    settings = params.pretrain.model_dump(mode="json") | {
        "steps": args.steps, "critic_after": 0, "batch": args.batch, "micro_batch": None,
        "log_every": args.log_every, "checkpoint_every": args.steps,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pretrain_loop_") as tmp:
        work = Path(tmp)
        vocab = params.tokenizer.arch.vocab_size
        written = [
            write_token_store(work / f"store{i}", args.store_steps, i, vocab=vocab)
            for i in range(args.stores)
        ]
        tokenizer = work / "tokenizer.safetensors"
        save_tokenizer(tokenizer, Tokenizer(tokenizer_config(params.tokenizer)))
        command = [
            sys.executable, "-m", "jowa.cli", "-q", "pretrain", "--params", json.dumps(settings),
            "--size", args.size, "--model", json.dumps(params.models[args.size].model_dump(mode="json")),
            "--tokenizer", str(tokenizer), "--stores", *[str(s) for s, _ in written],
            "--tokens", *[str(t) for _, t in written], "--out", str(work / "model.safetensors"),
            "--run-dir", str(work / "run"),
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"jowa pretrain failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
    rates = [m["samples_per_s"] for m in metrics]
    steady = rates[1:] or rates
    record = {
        "part": "loop", "impl": "ours", "size": args.size, "batch": args.batch, "steps": args.steps,
        "log_every": args.log_every, "pool_steps": args.stores * args.store_steps,
        "samples_per_s": statistics.median(steady), "interval_samples_per_s": rates,
        "wall_s": seconds, "gpu_mem_gb": metrics[-1].get("gpu_mem_gb"), "compile": settings["compile"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, "commit": commit(),
    }  # fmt: skip
    line = json.dumps(record)
    print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
