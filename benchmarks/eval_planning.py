"""Evaluation speed: env-steps/s of `jowa evaluate`'s loop, all episodes at once versus one at a time.

Plays a game in real ALE with random weights (JOWA of a params.yaml size, the paper tokenizer) through
`jowa.eval.evaluate.play`, exactly as `jowa evaluate` does: `--episodes` episodes batched together, and
the same number played one after another (the reference's design is one process per episode, each with
one env; one at a time in one process is that design without process start-up). Each run is capped at
`--steps` agent steps per episode; planners: beam search (K, H, context) and greedy.

    python benchmarks/eval_planning.py                                  # GPU: 150M, K=2 H=2, 16 episodes
    python benchmarks/eval_planning.py --params config/smoke.yaml --size tiny-m --steps 30 --tag cpu

Target (issue 10): batched beam search at >= 8x the one-at-a-time rate on one GPU. JSON to
`benchmarks/results/eval_planning[_TAG].json`. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from jowa.config import load_params
from jowa.eval.evaluate import play
from jowa.eval.params import PlannerSettings
from jowa.eval.planning import WorldModel
from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA
from jowa.train.pretrain import model_config
from jowa.train.train_tokenizer import tokenizer_config

ROOT = Path(__file__).resolve().parent.parent


def measure(world: WorldModel, tokenizer: Any, params: Any, settings: PlannerSettings | None,
            game: str, episodes: int) -> dict[str, Any]:  # fmt: skip
    """One `play` of `episodes` episodes at once (greedy without beam `settings`)."""
    eval_params = params.eval.model_copy(update={"episodes": episodes})
    start = time.perf_counter()
    result = play(world, tokenizer, game, eval_params, settings, progress=False)
    if world.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    steps = sum(result.lengths)
    return {"episodes": episodes, "env_steps": steps, "seconds": seconds, "env_steps_per_s": steps / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--size", default="150M")
    parser.add_argument("--game", default="SpaceInvaders")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="agent steps per episode")
    parser.add_argument("--beam-width", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--context", type=int, default=6)
    parser.add_argument("--tag")
    args = parser.parse_args()
    params = load_params(args.params)
    params = params.model_copy(update={"eval": params.eval.model_copy(update={"max_steps": args.steps})})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vocab = params.tokenizer.arch.vocab_size
    model = JOWA(model_config(params.models[args.size], params.pretrain, vocab, 36)).to(device)
    tokenizer = Tokenizer(tokenizer_config(params.tokenizer)).to(device).eval()
    world = WorldModel(model, bf16=params.eval.precision == "bf16")
    beam = PlannerSettings(beam_width=args.beam_width, horizon=args.horizon, context=args.context)
    records = []
    for planner, settings in (("beam", beam), ("greedy", None)):
        measure(world, tokenizer, params, settings, args.game, 1)  # warm-up: kernels, caches
        together = measure(world, tokenizer, params, settings, args.game, args.episodes)
        singles = [measure(world, tokenizer, params, settings, args.game, 1) for _ in range(args.episodes)]
        steps, seconds = sum(s["env_steps"] for s in singles), sum(s["seconds"] for s in singles)
        one_at_a_time = {"episodes": args.episodes, "env_steps": steps, "seconds": seconds,
                         "env_steps_per_s": steps / seconds}  # fmt: skip
        record = {
            "planner": planner, "size": args.size, "game": args.game, "steps_per_episode": args.steps,
            "settings": beam.model_dump() if planner == "beam" else {"context": params.eval.greedy_context},
            "batched": together, "one_at_a_time": one_at_a_time,
            "speedup": together["env_steps_per_s"] / one_at_a_time["env_steps_per_s"],
        }  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
    machine = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
               "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
               "threads": torch.get_num_threads()}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"eval_planning{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "records": records}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
