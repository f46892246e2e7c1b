"""Playing a JOWA model's episodes in Atari: the loop `jowa evaluate` and checkpoint selection share.

All episodes advance together: each agent step encodes the frames of every unfinished episode in one
tokenizer call and chooses their actions in one planner call (beam search batched over episodes x beam
candidates, MCTS, or greedy), then steps each environment. A finished episode leaves the batch. With
probability `epsilon` an episode takes a uniformly random valid action instead (the reference's 0.001).
It sits below training and evaluation alike: fine-tuning's checkpoint selection plays greedy episodes.

On a GPU a step waits for the device once: the frames go up asynchronously from pinned memory, tokens,
contexts and batches stay on the device (`jowa.planning.contexts`), and only the chosen actions come
back, which the environments need; the ε draws are applied to them on the host.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from jowa.core import games
from jowa.core.env import EnvHistory, env_state, make_env, restore_env_state
from jowa.planning.contexts import Contexts
from jowa.planning.mcts import mcts
from jowa.planning.params import EvalParams, MctsSettings, PlannerSettings
from jowa.planning.resume import ResumeFile, sigterm_deferred
from jowa.planning.search import WorldModel, beam_search, greedy

Settings = PlannerSettings | MctsSettings | None  # greedy has none


class Episodes:
    """The environments, contexts and running totals of every episode of one evaluation."""

    def __init__(
        self, game: str, params: EvalParams, context: int, device: torch.device | str = "cpu"
    ) -> None:
        self.envs = [
            make_env(game, params.protocol, seed=params.seed + i, max_steps=params.max_steps)
            for i in range(params.episodes)
        ]
        self.frames = [env.reset(seed=params.seed + i)[0] for i, env in enumerate(self.envs)]
        self.histories = [EnvHistory(env) for env in self.envs]
        self.contexts = Contexts(len(self.envs), context, device)
        self.returns = [0.0] * len(self.envs)
        self.lengths = [0] * len(self.envs)
        self.truncated = [False] * len(self.envs)
        self.active = list(range(len(self.envs)))
        self.actions = [bytearray() for _ in self.envs]  # full-action-set indices, 0..17
        self.resumed_at: list[int] = []  # agent steps at which an interrupted run was continued
        self.earlier_s = 0.0  # wall seconds the interrupted runs spent up to their saved state

    def step(self, index: int, action: int) -> None:
        """Take `action` in episode `index` (its context has it already: the planner wrote it there)."""
        self.actions[index].append(action)
        frame, reward, terminated, truncated, _ = self.envs[index].step(action)
        self.histories[index].record(action)
        self.returns[index] += float(reward)
        self.lengths[index] += 1
        self.frames[index] = frame
        if terminated or truncated:
            self.truncated[index] = bool(truncated and not terminated)
            self.active.remove(index)

    def state_dict(self) -> dict[str, Any]:
        """Everything the remaining steps depend on, environments included, for `jowa.planning.resume`."""
        envs = [env_state(env, history) for env, history in zip(self.envs, self.histories, strict=True)]
        return {
            "envs": envs, "frames": [f.copy() for f in self.frames],
            "contexts": self.contexts.state_dict(), "returns": list(self.returns),
            "lengths": list(self.lengths), "truncated": list(self.truncated), "active": list(self.active),
            "actions": [bytes(a) for a in self.actions], "resumed_at": list(self.resumed_at),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for env, history, saved in zip(self.envs, self.histories, state["envs"], strict=True):
            restore_env_state(env, history, saved)
        self.contexts.load_state_dict(state["contexts"])
        self.frames = list(state["frames"])
        self.returns, self.lengths = list(state["returns"]), list(state["lengths"])
        self.truncated, self.active = list(state["truncated"]), list(state["active"])
        self.actions = [bytearray(a) for a in state["actions"]]
        self.resumed_at = list(state["resumed_at"])

    def action_digests(self) -> list[str]:
        return [hashlib.sha256(actions).hexdigest() for actions in self.actions]


def choose(
    world: WorldModel, tokens: torch.Tensor, tasks: torch.Tensor, settings: Settings, gamma: float
) -> torch.Tensor:
    """Greedy actions without `settings`, else the planner's they are settings of."""
    if settings is None:
        return greedy(world, tokens, tasks)
    if isinstance(settings, MctsSettings):
        return mcts(world, tokens, tasks, simulations=settings.simulations, horizon=settings.horizon,
                    temperature=settings.temperature, gamma=gamma)  # fmt: skip
    return beam_search(
        world, tokens, tasks, width=settings.beam_width, horizon=settings.horizon, gamma=gamma
    ).first_actions


def play(
    world: WorldModel, tokenizer: Any, game: str, params: EvalParams, settings: Settings, progress: bool,
    video: list[np.ndarray] | None = None, resume: ResumeFile | None = None,
) -> Episodes:  # fmt: skip
    """Every episode to its end, greedy without planner `settings`; `video` collects episode 0's frames.

    With `resume`, play continues from its saved state if it has one, saves the state every
    `checkpoint_every` agent steps (steps of the batch), and on SIGTERM saves it after the current step,
    then lets SIGTERM take its course (`jowa` exits with 143).
    """
    context = params.greedy_context if settings is None else settings.context
    steps = context if settings is None else min(context, 8 - settings.horizon)
    episodes = Episodes(game, params, context, world.device)
    upload = FrameUpload(len(episodes.envs), episodes.frames[0].shape, world.device)
    task = games.task_id(game)
    valid = np.flatnonzero(games.ACTION_MASKS[task])
    rng = np.random.default_rng(params.seed)
    step, start = 0, time.perf_counter()
    saved = resume.load() if resume is not None else None
    if saved is not None:
        episodes.load_state_dict(saved["episodes"])
        episodes.resumed_at.append(saved["step"])
        episodes.earlier_s = saved["wall_s"]
        rng.bit_generator.state = saved["rng"]
        step = saved["step"]
        if video is not None:
            video[:] = saved["video"]

    def save() -> None:
        if resume is not None:
            seconds = episodes.earlier_s + time.perf_counter() - start
            state = {"step": step, "episodes": episodes.state_dict(), "rng": rng.bit_generator.state}
            resume.save({**state, "wall_s": seconds, "video": video})

    planner = {type(None): "greedy", PlannerSettings: "beam", MctsSettings: "mcts"}[type(settings)]
    with sigterm_deferred() as stop:  # installed before the bar shows: a SIGTERM from now on is kept
        bar = tqdm(desc=f"{game} {planner}", unit="step", disable=not progress, mininterval=2.0,
                   initial=sum(episodes.lengths))  # fmt: skip
        while episodes.active:
            played = _agent_step(
                world, tokenizer, episodes, upload, steps, task, valid, rng, params, settings, video
            )
            step += 1
            bar.update(played)
            bar.set_postfix(episodes_left=len(episodes.active), refresh=False)  # shown at the next refresh
            if episodes.active and (stop.requested or step % params.checkpoint_every == 0):
                save()
            if episodes.active and stop.requested:
                bar.close()
                if resume is not None:
                    resume.say(
                        f"saved the evaluation state at agent step {step}; the same command resumes it"
                    )
                stop.resend()
        bar.close()
    return episodes


class FrameUpload:
    """Frames (uint8 arrays) to the device as one batch: on a GPU asynchronously, through a pinned
    staging buffer of every episode's frame; on the CPU they are only stacked."""

    def __init__(self, episodes: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.staging = torch.empty((episodes, *shape), dtype=torch.uint8, pin_memory=True) if cuda else None
        self.copied = torch.cuda.Event() if cuda else None

    def __call__(self, frames: list[np.ndarray]) -> torch.Tensor:
        if self.staging is None or self.copied is None:
            return torch.from_numpy(np.stack(frames))
        self.copied.synchronize()  # the last step's copy is done (its action transfer waited for it)
        staged = self.staging[: len(frames)]
        np.stack(frames, out=staged.numpy())
        on_device = staged.to(self.device, non_blocking=True)
        self.copied.record()
        return on_device


def _agent_step(
    world: WorldModel, tokenizer: Any, episodes: Episodes, upload: FrameUpload, steps: int, task: int,
    valid: np.ndarray, rng: np.random.Generator, params: EvalParams, settings: Settings,
    video: list[np.ndarray] | None,
) -> int:  # fmt: skip
    """One step of every unfinished episode (encode their frames, choose their actions, step their envs);
    returns how many were stepped. Reads one thing back from the device: the chosen actions."""
    device, contexts = world.device, episodes.contexts
    active = list(episodes.active)
    if video is not None and 0 in active:
        video.append(episodes.frames[0])
    frames = upload([episodes.frames[i] for i in active])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=world.bf16):
        contexts.observe(active, tokenizer.encode(frames.unsqueeze(1).float().div_(255)))
    # Episodes started together hold equally long contexts; grouping keeps any mix correct.
    groups: dict[int, list[int]] = {}
    for index in active:
        groups.setdefault(min(steps, contexts.held[index]), []).append(index)
    chosen = []
    for held, members in groups.items():
        tasks = torch.full((len(members),), task, device=device)
        actions = choose(world, contexts.batch(members, held), tasks, settings, params.gamma)
        contexts.act(members, actions)
        chosen.append(actions)
    order = [index for members in groups.values() for index in members]
    for index, action in zip(order, torch.cat(chosen).tolist(), strict=True):  # the one device->host copy
        if rng.random() < params.epsilon:
            action = int(rng.choice(valid))
            contexts.replace_action(index, action)
        episodes.step(index, action)
    return len(active)
