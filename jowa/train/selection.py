"""Which fine-tuning checkpoint is the result: the final one, or the reference's pick by test return.

The reference evaluates during fine-tuning and keeps a checkpoint whenever its evaluation return is at
least 0.8 x the best seen so far (spec 6, gotcha 23). That chooses a model on the very episodes it is
then scored on, so it is an option, `finetune.selection.rule: best_test_return`, labeled as such in the
checkpoint's metadata; the default, `final`, keeps the last weights. Evaluation here is `jowa evaluate`'s
greedy play (`jowa.planning.play.play`) under the protocol and caps in `finetune.selection`.
"""

from __future__ import annotations

from typing import Any

import torch

from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA
from jowa.planning.params import EvalParams
from jowa.planning.play import play
from jowa.planning.search import WorldModel
from jowa.train.params import SelectionParams

KEEP_RATIO = 0.8  # the reference keeps a checkpoint at >= 0.8 x the best return so far


class Selection:
    """Evaluates every `every` steps and keeps the weights the rule picks (on the CPU)."""

    def __init__(self, settings: SelectionParams, game: str, precision: str) -> None:
        self.settings = settings
        self.game = game
        self.eval = EvalParams(
            protocol=settings.protocol, episodes=settings.episodes, max_steps=settings.max_steps, seed=0,
            epsilon=0.001, gamma=0.99, greedy_context=settings.context, precision=precision,
            checkpoint_every=1_000_000,  # unused: play here has no resume file (training resumes itself)
        )  # fmt: skip
        self.best: float | None = None
        self.kept: dict[str, Any] | None = None  # {"step", "return", "model", "tokenizer"} state dicts

    @property
    def active(self) -> bool:
        return self.settings.rule == "best_test_return"

    def due(self, step: int, last: int) -> bool:
        return self.active and (step % self.settings.every == 0 or step == last)

    def evaluate(self, step: int, model: JOWA, tokenizer: Tokenizer) -> float:
        """Greedy evaluation of the current weights; keeps them if the rule says so. Returns the mean."""
        episodes = play(WorldModel(model, bf16=self.eval.precision == "bf16"), tokenizer.eval(), self.game,
                        self.eval, None, progress=False)  # fmt: skip
        model.train()
        tokenizer.train()
        mean = sum(episodes.returns) / len(episodes.returns)
        if self.best is None or mean >= KEEP_RATIO * self.best:
            self.kept = {"step": step, "return": mean, "model": _cpu(model), "tokenizer": _cpu(tokenizer)}
        self.best = mean if self.best is None else max(self.best, mean)
        return mean

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.kept = state["best"], state["kept"]

    def apply(self, model: JOWA, tokenizer: Tokenizer) -> dict[str, Any]:
        """Load the kept weights (if the rule is on) and say what was chosen, for the metadata."""
        if not self.active or self.kept is None:
            return {"rule": self.settings.rule}
        model.load_state_dict(self.kept["model"])
        tokenizer.load_state_dict(self.kept["tokenizer"])
        return {"rule": "best_test_return (selected on test episodes)", "step": self.kept["step"],
                "return": self.kept["return"], "best_return": self.best}  # fmt: skip


def _cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}
