"""One optimizer step of the world-action model, shared by pretraining and fine-tuning (spec 4.1-4.5).

A step is: for each micro-batch of this rank's share, one forward over the interleaved tokens, the world
losses (x supervised weight while the critic trains) plus C51 TD and CQL when it does, backward
(gradients accumulate; DDP averages them over ranks on the last micro-batch); then one global-norm clip
and one AdamW step. Segments synthesized by imagination (fine-tuning, spec 5.5) may ride along: they
enter the critic losses only, never the world-model losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jowa.models.batch import Batch
from jowa.models.losses import action_mask_table, critic_losses, world_model_losses
from jowa.models.world_action import JOWA, JOWAOutput
from jowa.train.params import WorldTrainingParams
from jowa.train.runtime import Runtime
from jowa.weights.state_files import CheckpointError


@dataclass(frozen=True)
class Stage:
    """What a stretch of steps trains: pretraining stage 1 (world model only) or 2, or fine-tuning."""

    name: str
    critic: bool
    world_lr: float
    supervised_weight: float  # 1 while the critic does not train


def split(batch: Batch, parts: int) -> list[Batch]:
    """`batch` cut into `parts` equal micro-batches along the segment axis."""
    fields = {name: getattr(batch, name).chunk(parts) for name in batch.__dataclass_fields__}
    return [Batch(**{name: chunks[i] for name, chunks in fields.items()}) for i in range(parts)]


def concat(first: Batch, second: Batch) -> Batch:
    fields = first.__dataclass_fields__
    return Batch(**{name: torch.cat([getattr(first, name), getattr(second, name)]) for name in fields})


def _real_rows(output: JOWAOutput, rows: int) -> JOWAOutput:
    """The world-head outputs of the first `rows` segments (the Q outputs are not read by world losses)."""
    return JOWAOutput(
        obs_logits=None if output.obs_logits is None else output.obs_logits[:rows],
        reward_logits=output.reward_logits[:rows],
        end_logits=output.end_logits[:rows],
        q_logits=output.q_logits,
        q_target_logits=output.q_target_logits,
        obs_features=None if output.obs_features is None else output.obs_features[:rows],
    )


class StepLosses(nn.Module):
    """The forward pass and the stage's losses as one module: the unit DDP wraps and torch.compile
    compiles, so that Dynamo traces through DDP's forward into the loss heads as one graph (compiling
    a function that calls a DDP module breaks the graph at its forward, and the cross-entropies over
    2048 logits and the C51 projection no longer fuse with the forward pass)."""

    def __init__(self, model: JOWA, settings: WorldTrainingParams, stage: Stage, rt: Runtime) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.stage = stage
        self.atoms = model.config.atoms(rt.device)
        self.mask_table = action_mask_table(rt.device)

    def forward(self, batch: Batch, imagined: Batch | None) -> dict[str, torch.Tensor]:
        whole = batch if imagined is None else concat(batch, imagined)
        chunk = self.model.levers.obs_loss_chunk  # 0: full logits; else chunked (Levers)
        output = self.model(whole.tokens(), whole.tasks, obs_logits=chunk == 0)
        losses = world_model_losses(
            _real_rows(output, len(batch.tasks)), batch, supervised_weight=self.stage.supervised_weight,
            obs_layer=self.model.observation_head[-1], obs_chunk=chunk,
        )  # fmt: skip
        if self.stage.critic:
            s = self.settings
            losses |= critic_losses(
                output,
                whole,
                atoms=self.atoms,
                gamma=s.gamma,
                cql_weight=s.cql_weight,
                mask_table=self.mask_table,
            )
        return losses


class WorldTrainer:
    """The model, its optimizer for the current stage and the step; DDP-wrapped under torchrun."""

    def __init__(self, model: JOWA, rt: Runtime, settings: WorldTrainingParams, micro_batch: int) -> None:
        self.model = model.to(rt.device).train()
        self.rt = rt
        self.settings = settings
        self.micro_batch = micro_batch
        self.stage: Stage | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.losses: nn.Module | None = None  # the stage's StepLosses (DDP-wrapped under torchrun)
        self._compiled: Callable[..., dict[str, torch.Tensor]] | None = None

    def enter(self, stage: Stage) -> None:
        """Start `stage`: fresh AdamW moments and learning rates (spec 4.4), Q head trained or frozen."""
        self.stage = stage
        self.model.q_head.requires_grad_(stage.critic)
        s = self.settings
        self.optimizer = self.model.configure_optimizers(
            world_lr=stage.world_lr, critic_lr=s.critic_lr, weight_decay=s.weight_decay,
            betas=s.adam_betas, eps=s.adam_eps, fused=self.rt.on_gpu,
        )  # fmt: skip
        losses: nn.Module = StepLosses(self.model, s, stage, self.rt)
        if self.rt.distributed:  # re-wrapped: DDP fixes its parameter set when built
            # Replicas start equal (broadcast when wrapped) and no buffer changes in training, so the
            # layout buffers need no broadcast before every forward; gradients live in DDP's buckets.
            ids = [self.rt.device.index] if self.rt.on_gpu else None
            losses = DistributedDataParallel(
                losses, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True
            )
        self.losses = losses  # eager, and what `torch._dynamo.explain` inspects
        # Static shapes: a run's micro-batches all have one shape (fine-tuning adds one with imagined
        # segments), so a second shape compiles its own static graph instead of a symbolic-batch one.
        self._compiled = torch.compile(losses, dynamic=False) if self.rt.compile else losses

    def step(self, step: int, batch: Batch, imagined: Batch | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step on this rank's `batch` (+ `imagined` segments for the critic only)."""
        assert self.optimizer is not None and self.losses is not None and self._compiled is not None, (
            "call enter(stage) first"
        )
        parts = max(1, len(batch.tasks) // self.micro_batch)
        real_parts = split(batch, parts)
        imagined_parts = split(imagined, parts) if imagined is not None else [None] * parts
        totals: dict[str, torch.Tensor] = {}
        for i, (real, extra) in enumerate(zip(real_parts, imagined_parts, strict=True)):
            last = i == parts - 1
            no_sync = self.losses.no_sync() if self.rt.distributed and not last else contextlib.nullcontext()
            with no_sync:
                with self.rt.autocast():
                    losses = self._compiled(real, extra)
                    loss = sum(losses.values()) / parts
                loss.backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0) + value.detach() / parts
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.settings.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if step % self.settings.target_update == 0:
            self.model.update_target()
        return {**totals, "loss_total": sum(totals.values()), "grad_norm": grad_norm}

    def learning_rates(self) -> dict[str, float]:
        """`lr` (the world groups') and, while the critic trains, `lr_critic`."""
        assert self.optimizer is not None
        rates = {group["name"]: group["lr"] for group in self.optimizer.param_groups}
        return {"lr": rates["world_decay"]} | ({"lr_critic": rates["critic"]} if "critic" in rates else {})

    def state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.stage is not None
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Weights and optimizer of a saved step; `enter` the saved step's stage first."""
        assert self.optimizer is not None
        if any(name.endswith(".attn.query.weight") for name in state["model"]):
            raise CheckpointError(
                "this resume state was written before the q/k/v projections were fused (issue 19) and its "
                "optimizer moments do not fit: delete the run directory's resume state to start the run over"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
