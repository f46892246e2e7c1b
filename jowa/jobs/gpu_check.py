"""`jowa gpu-check`: does this job see exactly the GPUs it asked for? Run it before the long jobs.

A job asking for N GPUs should see N CUDA devices. Clusters get this wrong in ways that only show at
run time (SLURM's executor has had multi-GPU jobs that see one GPU, or run twice with one GPU each), and
a training job on the wrong device count runs slowly or not at all hours later. The `gpu_check` rule runs
this command under `jowa gpu-run` with the GPU count a training job gets, and fails if the count differs;
asked for none, it records a CPU run and checks nothing. The JSON says what was seen and where.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from jowa.core.atomic import atomic_file
from jowa.core.errors import JowaError


class GpuCheckError(JowaError, RuntimeError):
    """The job sees a different number of GPUs than it asked for."""


def nvidia_smi() -> list[str]:
    """`nvidia-smi -L` lines (the GPUs the driver lists; CUDA_VISIBLE_DEVICES does not filter them)."""
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.splitlines() if done.returncode == 0 else [f"nvidia-smi failed: {done.stderr.strip()}"]


def observe() -> dict[str, Any]:
    import torch

    count = torch.cuda.device_count()
    return {
        "torch_device_count": count,
        "devices": [torch.cuda.get_device_name(i) for i in range(count)],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "nvidia_smi": nvidia_smi(),
        "slurm": {k: v for k, v in os.environ.items() if k in ("SLURM_JOB_ID", "SLURM_JOB_GPUS")},
        "host": platform.node(),
        "torch": torch.__version__,
    }


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expect", type=int, required=True, help="GPUs the job asked for ({resources.gpu})")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")


def main(args: argparse.Namespace) -> None:
    seen = observe()
    record = {"asked": args.expect, **seen}
    if args.expect == 0:
        record["result"] = "CPU run: no GPU asked for, nothing checked"
    elif seen["torch_device_count"] != args.expect:
        raise GpuCheckError(
            f"asked for {args.expect} GPU(s) but torch sees {seen['torch_device_count']} "
            f"(CUDA_VISIBLE_DEVICES={seen['cuda_visible_devices']!r}, nvidia-smi lists "
            f"{len(seen['nvidia_smi'])}, on {seen['host']}); the GPU jobs would run on the wrong devices"
        )
    else:
        record["result"] = f"ok: sees the {args.expect} GPU(s) it asked for"
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
