"""`jowa evaluate`: play one model on one game, every episode at once, and write the returns as JSON.

The episodes are played by `jowa.planning.play.play` (all at once, batched through the planner).

The score of an episode is the sum of its raw game rewards, the final step's included; the reference
updates its done mask before adding the last reward and so drops it (spec 7.1). The output records
every setting, the checkpoint's hash, each episode's actions (as a SHA-256 of their bytes), wall time and
environment steps per second. A killed or timed-out job resumes where it was (`jowa.planning.resume`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from jowa.core.atomic import atomic_file
from jowa.core.config import argument_type, params_help, parse_section
from jowa.core.env import get_protocol
from jowa.core.params_base import Game, ParamsError
from jowa.planning.params import EvalParams, MctsSettings, PlannerSettings, PlanningParams
from jowa.planning.play import Settings, play
from jowa.planning.resume import ResumeFile
from jowa.planning.search import WorldModel
from jowa.train.run import sha256_file
from jowa.weights.checkpoints import load_model
from jowa.weights.tokenizer_checkpoints import load_tokenizer

PLANNERS = ("greedy", "beam", "mcts")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(EvalParams, "eval"))
    parser.add_argument("--model", type=Path, required=True, help="a JOWA .safetensors (ours or imported)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="its tokenizer .safetensors")
    parser.add_argument("--game", type=argument_type(Game, "game"), required=True, help="the game to play")
    parser.add_argument(
        "--planner", choices=PLANNERS, required=True, help="greedy (no planning), beam search or MCTS"
    )
    parser.add_argument(
        "--beam", help="with --planner beam: its settings as JSON (beam_width, horizon, context), or a "
        "params file whose planning section gives them for --size and --game",
    )  # fmt: skip
    parser.add_argument(
        "--mcts", help="with --planner mcts: its settings as JSON, or a params file (planning.mcts)"
    )
    parser.add_argument(
        "--size", help="the model's size name (recorded; picks --beam's settings from a file)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the result JSON")
    parser.add_argument("--video", type=Path, help="also write episode 0 as an mp4")
    parser.add_argument("--device", help="torch device (default: the GPU if any, else the CPU)")
    parser.add_argument(
        "--no-cuda-graphs", action="store_true",
        help="on a GPU, run every planner pass eagerly instead of replaying captured CUDA graphs",
    )  # fmt: skip


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    import cv2

    with atomic_file(path) as tmp:
        mp4 = tmp.with_suffix(".mp4")  # the writer picks its format from the name
        writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 15, (336, 336))
        for frame in frames:
            writer.write(cv2.cvtColor(cv2.resize(frame, (336, 336), interpolation=cv2.INTER_NEAREST),
                                      cv2.COLOR_GRAY2BGR))  # fmt: skip
        writer.release()
        mp4.replace(tmp)


def planner_settings(args: argparse.Namespace) -> Settings:
    """The chosen planner's settings from --beam or --mcts (JSON, or a params file's planning section)."""
    if args.planner == "greedy":
        return None
    given = getattr(args, args.planner)
    if given is None:
        raise ParamsError(
            f"--planner {args.planner} needs --{args.planner} (settings as JSON, or a params file)"
        )
    if given.lstrip().startswith("{"):
        kind = PlannerSettings if args.planner == "beam" else MctsSettings
        return parse_section(given, kind, f"planning.{args.planner}")
    planning = parse_section(given, PlanningParams, "planning")
    return planning.settings(args.size or "", args.game) if args.planner == "beam" else planning.mcts


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, EvalParams, "eval")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_model(args.model, device)
    tokenizer, _ = load_tokenizer(args.tokenizer, device)
    tokenizer.eval()
    world = WorldModel(model, bf16=params.precision == "bf16", graphs=not args.no_cuda_graphs)
    settings = planner_settings(args)
    chosen = settings.model_dump() if settings is not None else {"context": params.greedy_context}
    hashes = {"model": sha256_file(args.model), "tokenizer": sha256_file(args.tokenizer)}
    resume = ResumeFile(args.out, fingerprint={
        "sha256": hashes, "game": args.game, "planner": args.planner, "settings": chosen,
        "eval": params.model_dump(mode="json", exclude={"checkpoint_every"}), "device": device.type,
        "video": args.video is not None,
    })  # fmt: skip
    video: list[np.ndarray] | None = [] if args.video else None
    start = time.perf_counter()
    episodes = play(world, tokenizer, args.game, params, settings, not args.quiet, video, resume)
    seconds = episodes.earlier_s + time.perf_counter() - start
    env_steps = sum(episodes.lengths)
    result = {
        "game": args.game, "planner": args.planner, "size": args.size,
        "returns": episodes.returns, "lengths": episodes.lengths, "truncated": episodes.truncated,
        "mean_return": float(np.mean(episodes.returns)), "actions_sha256": episodes.action_digests(),
        "settings": {
            "eval": params.model_dump(mode="json"),
            "protocol": dataclasses.asdict(get_protocol(params.protocol)),
            "planner": chosen,
        },
        "model": {"path": str(args.model), "sha256": hashes["model"], "meta": meta},
        "tokenizer": {"path": str(args.tokenizer), "sha256": hashes["tokenizer"]},
        "wall_s": seconds, "env_steps": env_steps, "env_steps_per_s": env_steps / seconds,
        "resumed_at_steps": episodes.resumed_at,
        "device": str(device), "torch": torch.__version__, "host": platform.node(),
    }  # fmt: skip
    if video is not None:
        write_video(args.video, video)
    with atomic_file(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    resume.remove()
