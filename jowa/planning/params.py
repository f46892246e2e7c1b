"""The `eval` and `planning` sections of params.yaml: protocol and episodes; beam search settings.

Beam search settings are per model size and game because the paper tuned the context length per size
and game on the evaluation episodes themselves (spec 7.2); params.yaml carries the paper's values (from
`tests/reference/jowa_raw_scores/`), and `PlanningParams.settings` falls back to `default` for any size
or game not listed (the smoke sizes, held-out games). They are a section of their own so that a rule
passes each evaluation only its own settings: editing one game's K reruns that game's beam jobs alone.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from jowa.core.params_base import Game, Section, Seed

Positive = Annotated[int, Field(ge=1)]
ContextSteps = Annotated[int, Field(ge=1, le=8)]


class PlannerSettings(Section):
    """One game's beam search (spec 5.3)."""

    beam_width: Positive
    """K: nodes kept per depth; each expands its top min(K, valid actions) actions"""
    horizon: Annotated[int, Field(ge=0, le=7)]
    """H: imagined steps; 0 is greedy on the root's Q-values"""
    context: ContextSteps
    """steps of history the agent keeps (the paper's buffer_size); planning uses at most 8 - H of them"""


class EvalParams(Section):
    protocol: Literal["jowa", "standard"]
    """environment protocol: "jowa" (the paper: no sticky actions, 108,000-step cap) or "standard"
    (sticky actions 0.25, 27,000-step cap = 108k frames)"""
    episodes: Positive
    """episodes per (model, game, planner), all played at once"""
    max_steps: Positive | None
    """agent steps after which an episode is cut (truncated); null: the protocol's cap"""
    seed: Seed
    """seed of the environments (episode i gets seed + i) and of the epsilon draws"""
    epsilon: Annotated[float, Field(ge=0, le=1)]
    """probability of a uniformly random valid action instead of the planner's (reference: 0.001)"""
    gamma: Annotated[float, Field(gt=0, le=1)]
    """discount of imagined rewards in the beam score"""
    greedy_context: ContextSteps
    """steps of history of the evaluation without planning"""
    precision: Literal["bf16", "fp32"]
    """autocast dtype of the model on a GPU; CPUs run float32"""
    checkpoint_every: Positive
    """agent steps (of the whole batch) between saves of the resumable state beside the output; a killed
    job loses at most this many, a SIGTERM'd one none (`jowa.planning.resume`)"""


class MctsSettings(Section):
    """MCTS (spec 5.4), the alternative planner; the reference's MCTS script: H 6, T 0.9, 20 simulations."""

    simulations: Positive
    """simulations per action (the reference's default budget is K^2 (H - 1) + K, beam search's)"""
    horizon: Annotated[int, Field(ge=1, le=7)]
    """tree depth"""
    temperature: Annotated[float, Field(gt=0)]
    """T of the priors softmax(Q / T)"""
    context: ContextSteps
    """steps of history the agent keeps; planning uses at most 8 - horizon of them"""


class PlanningParams(Section):
    mcts: MctsSettings
    """the MCTS planner's settings (`jowa evaluate --planner mcts`; not in the DAG: the paper's tables
    use beam search)"""
    default: PlannerSettings
    """beam search settings of sizes and games not listed in sizes"""
    sizes: dict[str, dict[Game, PlannerSettings]]
    """model size -> game -> beam search settings (the paper's per-game K, H and context)"""

    def settings(self, size: str, game: str) -> PlannerSettings:
        return self.sizes.get(size, {}).get(game, self.default)
