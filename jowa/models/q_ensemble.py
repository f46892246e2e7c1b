"""The distributional Q head of JOWA: an ensemble of MLPs with stacked weights (spec 3.4), and the
mixture distribution and expected values the critic losses and the planner read from its logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QEnsemble(nn.Module):
    """num_q independent MLPs evaluated together with weights stacked over members.

    Member i: Linear(E,H) -> Dropout -> LayerNorm(H) -> Mish -> Linear(H,H) -> LayerNorm(H) -> Mish ->
    Linear(H, A*Z). Weights are (members, out, in), the reference's stacked layout; dropout masks are
    independent per member because the dropout acts on the stacked activations.
    """

    # Order of the reference's flat parameter list `head_module.params.0..9`.
    PARAMETER_NAMES = (
        "in_weight", "in_bias", "norm1_weight", "norm1_bias", "mid_weight", "mid_bias",
        "norm2_weight", "norm2_bias", "out_weight", "out_bias",
    )  # fmt: skip

    def __init__(self, members: int, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_weight = nn.Parameter(torch.empty(members, hidden, in_dim))
        self.in_bias = nn.Parameter(torch.empty(members, hidden))
        self.norm1_weight = nn.Parameter(torch.empty(members, hidden))
        self.norm1_bias = nn.Parameter(torch.empty(members, hidden))
        self.mid_weight = nn.Parameter(torch.empty(members, hidden, hidden))
        self.mid_bias = nn.Parameter(torch.empty(members, hidden))
        self.norm2_weight = nn.Parameter(torch.empty(members, hidden))
        self.norm2_bias = nn.Parameter(torch.empty(members, hidden))
        self.out_weight = nn.Parameter(torch.empty(members, out_dim, hidden))
        self.out_bias = nn.Parameter(torch.empty(members, out_dim))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default Linear/LayerNorm init, as the reference ensemble keeps (spec gotcha 18)."""
        for weight, bias in (
            (self.in_weight, self.in_bias),
            (self.mid_weight, self.mid_bias),
            (self.out_weight, self.out_bias),
        ):
            bound = 1.0 / math.sqrt(weight.shape[-1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)
        for weight, bias in ((self.norm1_weight, self.norm1_bias), (self.norm2_weight, self.norm2_bias)):
            nn.init.ones_(weight)
            nn.init.zeros_(bias)

    @staticmethod
    def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(members, N, in) or broadcastable (1, N, in) -> (members, N, out) with one batched matmul."""
        return torch.baddbmm(bias.unsqueeze(1), x.expand(weight.shape[0], -1, -1), weight.transpose(1, 2))

    @staticmethod
    def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * weight.unsqueeze(1) + bias.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, E) hidden states -> (members, B, S, out_dim) logits."""
        batch, steps, width = x.shape
        h = self.dropout(self._linear(x.reshape(1, batch * steps, width), self.in_weight, self.in_bias))
        h = F.mish(self._layer_norm(h, self.norm1_weight, self.norm1_bias))
        h = self._linear(h, self.mid_weight, self.mid_bias)
        h = F.mish(self._layer_norm(h, self.norm2_weight, self.norm2_bias))
        out = self._linear(h, self.out_weight, self.out_bias)
        return out.view(out.shape[0], batch, steps, out.shape[-1])


def ensemble_probabilities(q_logits: torch.Tensor, num_actions: int) -> torch.Tensor:
    """(num_q, B, S, A*Z) logits -> (B, S, A, Z) atom probabilities averaged over members (gotcha 5)."""
    members, batch, steps, _ = q_logits.shape
    per_member = q_logits.reshape(members, batch, steps, num_actions, -1).softmax(dim=-1)
    return per_member.mean(dim=0)


def expected_q(probabilities: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Q(h, a) = sum_k z_k p_k: (..., A, Z) probabilities -> (..., A) values.

    A product and sum rather than a matmul, which autocast would run in bf16: CQL's logsumexp over Q-values
    near 10 would lose its third digit.
    """
    return (probabilities * atoms).sum(dim=-1)
