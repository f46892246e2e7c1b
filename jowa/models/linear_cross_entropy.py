"""Cross-entropy of a linear layer's logits without holding all of them: the 2048-way observation loss.

At batch 256 the observation head's logits are (256 x 287, 2048) floats, about 0.6 GB in float32 plus
their bf16 copy and gradient, all alive from the forward pass to the backward. Here rows go through
the layer and the loss in chunks, each chunk's logits are dropped after its loss and recomputed in
the backward pass (activation checkpointing), so at most one chunk's logits exist at a time.

torch 2.13's `F.linear_cross_entropy(..., options=LinearCrossEntropyOptions(...))` chunks too, but
its chunked path is an op torch.compile does not trace (it falls back to eager there), which would
break the compiled step into several graphs; `torch.utils.checkpoint` is traced into the one graph.
Liger-Kernel's fused linear cross-entropy needs Triton on CUDA and cannot run on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_loss(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, ignore: int
) -> torch.Tensor:
    """Summed cross-entropy of one chunk's rows (the mean is taken over all chunks' rows at the end)."""
    logits = F.linear(features, weight, bias)
    return F.cross_entropy(logits, targets, ignore_index=ignore, reduction="sum")


def chunked_linear_cross_entropy(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_rows: int,
    ignore_index: int,
) -> torch.Tensor:
    """Mean cross-entropy of `features @ weight.T + bias` (N, C) against `targets` (N,) over the targets
    that are not `ignore_index`, as `F.cross_entropy(F.linear(...), ignore_index=...)` computes it, with
    the logits of `chunk_rows` rows at a time. Same value and gradients up to float summation order."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, not {chunk_rows}")
    total = features.new_zeros((), dtype=torch.float32)
    for rows, labels in zip(features.split(chunk_rows), targets.split(chunk_rows), strict=True):
        # No randomness inside, so no RNG state to save and restore for the recomputation.
        total = total + checkpoint(
            _chunk_loss,
            rows,
            weight,
            bias,
            labels,
            ignore_index,
            use_reentrant=False,
            preserve_rng_state=False,
        )
    return total / (targets != ignore_index).sum()
