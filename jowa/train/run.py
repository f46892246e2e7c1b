"""A training run's directory and loop: resumable state, metrics.jsonl, TensorBoard, progress, NaN stop.

    <run dir>/state.pt        the last checkpoint: every state a step depends on (written atomically)
    <run dir>/metrics.jsonl   one JSON object per logging step
    <run dir>/tensorboard/    the same values as TensorBoard events

The run directory is not a Snakemake output (only the final `.safetensors` are), so Snakemake's cleanup
of a killed job leaves it in place and the rerun resumes from `state.pt`. The state records a
fingerprint of the run's settings and inputs: a run with other settings or rebuilt inputs starts over
instead of resuming someone else's state. A finished run deletes its state; its final weights are the
result. Data order is a function of (seed, step) (`step_generator`), so resuming needs no sampler state.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from jowa.core.atomic import atomic_file
from jowa.core.errors import JowaError
from jowa.train.runtime import Runtime, peak_memory_gb, rng_state, set_rng_state

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(JowaError, RuntimeError):
    """A loss or gradient norm became NaN or infinite."""


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The CPU generator that draws step `step`'s data: the same on every rank and after a resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + stream)


def local_draw(population: int, batch: int, seed: int, step: int, rt: Runtime) -> torch.Tensor:
    """This rank's slice of step `step`'s `batch` indices drawn uniformly from range(population): every
    rank draws the same global batch, so 1 process and N ranks train on the same segments."""
    drawn = torch.randint(population, (batch,), generator=step_generator(seed, step))
    local = batch // rt.world_size
    return drawn[rt.rank * local : (rt.rank + 1) * local]


def file_identity(path: Path | str) -> dict[str, Any]:
    """What identifies an input file or directory cheaply: its path, size and modification time."""
    path = Path(path)
    target = path / "meta.json" if path.is_dir() else path
    stat = target.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class MetricSums:
    """Per-step tensors summed on the device, read back once per logging step (no sync every step).

    Each value is averaged over the steps that reported it (an evaluation return is logged as is)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._bad: list[tuple[int, str, torch.Tensor]] = []

    def add(self, step: int, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1
            self._bad.append((step, name, ~torch.isfinite(value)))

    def check(self) -> None:
        """Raise TrainingDiverged naming the first step whose loss or gradient norm was not finite."""
        if self._bad:
            flags = torch.stack([flag for _, _, flag in self._bad]).cpu()
            if bool(flags.any()):
                step, name, _ = self._bad[int(flags.nonzero()[0, 0])]
                raise TrainingDiverged(f"{name} became nan or inf at step {step}")
        self._bad.clear()

    def means(self) -> dict[str, float]:
        self.check()
        names = list(self.sums)
        if not names:
            return {}
        values = torch.stack([self.sums[name] / self.counts[name] for name in names]).cpu()
        self.sums, self.counts = {}, {}
        return dict(zip(names, values.tolist(), strict=True))


class TrainingRun:
    """The run directory of one training job, and the loop every training command runs."""

    def __init__(
        self,
        directory: Path | str,
        rt: Runtime,
        *,
        fingerprint: Mapping[str, Any],
        total_steps: int,
        checkpoint_every: int,
        log_every: int,
        description: str,
        quiet: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.rt = rt
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.total_steps = total_steps
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.description = description
        self.quiet = quiet or not rt.is_main
        self.last_saved: int | None = None
        self._tensorboard: Any = None

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def metrics_path(self) -> Path:
        return self.directory / METRICS_FILE

    def say(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    # -- resume and checkpoints

    def resume(self) -> dict[str, Any] | None:
        """The saved state to continue from, or None (fresh start; stale state and metrics removed)."""
        state = None
        if self.state_path.exists():
            state = torch.load(self.state_path, map_location="cpu", weights_only=False)
            if state.get("fingerprint") != self.fingerprint:
                self.say(f"{self.state_path}: saved by a run with other settings or inputs; starting over")
                state = None
        self.rt.barrier()
        if state is None:
            if self.rt.is_main:
                self.state_path.unlink(missing_ok=True)
                self.metrics_path.unlink(missing_ok=True)
            self.rt.barrier()
            return None
        self.last_saved = state["step"]
        ranks = state["rng"]
        if len(ranks) == self.rt.world_size:
            set_rng_state(ranks[self.rt.rank], self.rt.device)
        else:
            torch.manual_seed(self.fingerprint.get("seed", 0) + 1000 * state["step"] + self.rt.rank)
            self.say(f"saved on {len(ranks)} rank(s), resumed on {self.rt.world_size}: dropout reseeded")
        self._truncate_metrics(state["step"])
        self.say(f"resuming {self.description} from step {state['step']} ({self.state_path})")
        return state

    def _truncate_metrics(self, step: int) -> None:
        """Drop logged lines after the resumed step (they are logged again)."""
        if not (self.rt.is_main and self.metrics_path.exists()):
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Write the state after `step` atomically: a kill mid-write leaves the previous one intact.

        Under torchrun every rank's weights must be identical (DDP keeps them so); a rank that drifted
        stops the run here rather than after days of training a model no rank saves.
        """
        digests = self.rt.gather(_digest(state.get("model", {})))
        if len(set(digests)) != 1:
            raise TrainingDiverged(f"{self.description}: the ranks' weights differ at step {step}")
        ranks = self.rt.gather(rng_state(self.rt.device))
        if self.rt.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            full = {**state, "step": step, "fingerprint": self.fingerprint, "rng": ranks}
            with atomic_file(self.state_path) as tmp:
                torch.save(full, tmp)
        self.last_saved = step
        self.rt.barrier()

    def finish(self) -> None:
        """The run's result is written: its resumable state is no longer needed."""
        if self.rt.is_main:
            self.state_path.unlink(missing_ok=True)
        if self._tensorboard is not None:
            self._tensorboard.close()

    # -- logging

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.rt.is_main:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.directory / "tensorboard"))
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                self._tensorboard.add_scalar(name, value, record["step"])
        self._tensorboard.flush()

    # -- the loop

    def loop(
        self,
        start: int,
        step_fn: Callable[[int], dict[str, torch.Tensor]],
        *,
        state_fn: Callable[[], dict[str, Any]],
        info_fn: Callable[[int], dict[str, Any]],
        samples_per_step: int,
        tokens_per_step: int,
    ) -> None:
        """Steps start+1 .. total_steps: `step_fn(step)` updates and returns tensors to log (summed on the
        device); every `log_every` steps a metrics line with `info_fn(step)` (stage, lr) and throughput;
        every `checkpoint_every` steps `state_fn()` is saved. A non-finite value stops the run."""
        sums = MetricSums()
        bar = tqdm(
            total=self.total_steps, initial=start, desc=self.description, unit="step", disable=self.quiet,
            dynamic_ncols=True, mininterval=2.0,
        )  # fmt: skip
        interval_start, interval_steps = time.perf_counter(), 0
        try:
            for step in range(start + 1, self.total_steps + 1):
                sums.add(step, step_fn(step))
                interval_steps += 1
                bar.update()
                if step % self.log_every == 0 or step == self.total_steps:
                    seconds = time.perf_counter() - interval_start
                    values = self.rt.mean(sums.means())
                    samples_per_s = samples_per_step * interval_steps / seconds
                    record = {
                        "step": step, **info_fn(step), **values,
                        "samples_per_s": samples_per_s,
                        "tokens_per_s": samples_per_s * tokens_per_step / samples_per_step,
                        "gpu_mem_gb": peak_memory_gb(self.rt.device),
                    }  # fmt: skip
                    self.log(record)
                    losses = {k: f"{v:.3g}" for k, v in values.items() if k.startswith("loss")}
                    bar.set_postfix(losses, refresh=False)  # a refresh per call would defeat mininterval
                    interval_start, interval_steps = time.perf_counter(), 0
                if step % self.checkpoint_every == 0 and step < self.total_steps:
                    sums.check()
                    self.save(step, state_fn())
            sums.check()
        except TrainingDiverged as error:
            last = (
                f"the last good checkpoint is {self.state_path} (step {self.last_saved})"
                if self.last_saved is not None
                else "no checkpoint was saved before it"
            )
            raise TrainingDiverged(f"{self.description}: {error}; {last}") from None
        finally:
            bar.close()
