"""One optimizer step of the VQ tokenizer (spec 2.6-2.7), shared by `jowa train-tokenizer` and fine-tuning.

Adam without weight decay, global-norm clip, bf16 autocast on a GPU. Under torchrun the forward runs
through DistributedDataParallel, so gradients are averaged over ranks; the reference calls the loss on
the unwrapped module and never averages them (spec gotcha 21). When the tokenizer has LPIPS weights the
perceptual term is on, with LPIPS's dropout active as in the reference (gotcha 24).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jowa.models.tokenizer import Tokenizer
from jowa.train.runtime import Runtime


class TokenizerTrainer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        rt: Runtime,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        grad_clip: float,
    ) -> None:
        self.tokenizer = tokenizer.to(rt.device).train()
        self.rt = rt
        self.grad_clip = grad_clip
        self.trainable = [p for p in tokenizer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            self.trainable, lr=lr, betas=betas, eps=eps, fused=rt.on_gpu or None
        )
        module: nn.Module = torch.compile(tokenizer) if rt.compile else tokenizer
        if rt.distributed:
            module = DistributedDataParallel(module, device_ids=[rt.device.index] if rt.on_gpu else None)
        self.forward = module

    def step(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on this rank's frames (N, 1, 84, 84) in [0, 1]; returns the loss terms."""
        self.tokenizer.train()
        with self.rt.autocast():
            x = self.tokenizer.preprocess(frames)
            losses = self.tokenizer.loss_terms(x, self.forward(x))
            loss = sum(losses.values())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        detached = {f"tokenizer_{name}": value.detach() for name, value in losses.items()}
        return {**detached, "tokenizer_grad_norm": grad_norm}

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens of frames (..., 1, 84, 84) in [0, 1] by the current weights (no gradients)."""
        with self.rt.autocast():
            return self.tokenizer.encode(frames)

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.state_dict(), "tokenizer_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokenizer.load_state_dict(state["tokenizer"])
        self.optimizer.load_state_dict(state["tokenizer_optimizer"])
