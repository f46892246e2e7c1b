"""Where a training run executes: device, ranks, precision, and the collectives the loops need.

A run started as a plain process is rank 0 of 1. Under `torchrun` (which sets RANK, WORLD_SIZE and
LOCAL_RANK) it joins the process group: NCCL on GPUs, gloo on CPUs, one GPU per local rank. Gradients
are averaged by DistributedDataParallel; everything else a loop shares between ranks (logged values,
RNG states for the checkpoint) goes through the helpers here, which do nothing in a single process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from jowa.core.errors import JowaError


class TrainingSetupError(JowaError, ValueError):
    """A batch does not split over the ranks, or a setting does not fit the machine."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    precision: str  # "bf16" or "fp32"; CPUs always compute in float32
    compile: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast around forward passes and losses on a GPU; nothing on a CPU."""
        if self.on_gpu and self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def share(self, batch: int, micro_batch: int | None, what: str) -> tuple[int, int]:
        """(segments per rank, segments per forward pass) of a global batch, or a clear error."""
        if batch % self.world_size:
            raise TrainingSetupError(f"{what}.batch {batch} does not split over {self.world_size} ranks")
        local = batch // self.world_size
        micro = local if micro_batch is None else micro_batch
        if local % micro:
            raise TrainingSetupError(
                f"{what}.micro_batch {micro} does not divide the {local} segments each of "
                f"{self.world_size} rank(s) gets of {what}.batch {batch}"
            )
        return local, micro

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average over ranks of scalar values, with one collective."""
        if not self.distributed or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist(), strict=True))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def runtime(*, precision: str, compile: bool, device: str | None = None) -> Iterator[Runtime]:
    """The run's Runtime; joins (and afterwards leaves) the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = torch.device(device) if device else _default_device(local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = world_size > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    try:
        yield Runtime(chosen, rank, world_size, precision, compile and chosen.type == "cuda")
    finally:
        if started:
            dist.destroy_process_group()


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG states (dropout masks), for an exact resume."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset, in GB (0 on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
