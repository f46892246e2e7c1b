"""What a resumable evaluation costs: ALE per agent step, and saving and restoring the state of 16 envs.

Steps `--episodes` real ALE environments (`jowa.planning.play.Episodes`, as `jowa evaluate` does, without
a model: actions are random valid ones) for `--steps` agent steps under each protocol, then saves the
whole state (`Episodes.state_dict`, the ε generator) with `jowa.planning.resume` and restores it into
fresh environments. Reports ms per agent step of the environments alone (the host's share of every
evaluation step, whatever the planner), ms per save and per restore, and the state's size.
The environment rate, with the planner's per-step cost, gives the SLURM profile's evaluation times.

    python benchmarks/eval_resume.py            # 16 episodes, 300 steps, Pong; JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from jowa.core import games
from jowa.planning.params import EvalParams
from jowa.planning.play import Episodes
from jowa.planning.resume import ResumeFile

ROOT = Path(__file__).resolve().parent.parent


def measure(protocol: str, game: str, episodes: int, steps: int) -> dict:
    params = EvalParams(protocol=protocol, episodes=episodes, max_steps=None, seed=0, epsilon=0.001,
                        gamma=0.99, greedy_context=8, precision="fp32", checkpoint_every=500)  # fmt: skip
    played = Episodes(game, params, context=8)
    valid = np.flatnonzero(games.ACTION_MASKS[games.task_id(game)])
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        for index in list(played.active):
            played.step(index, int(rng.choice(valid)))
    step_s = (time.perf_counter() - start) / steps
    with tempfile.TemporaryDirectory() as tmp:
        resume = ResumeFile(Path(tmp) / "out.json", fingerprint={"benchmark": True})
        start = time.perf_counter()
        resume.save({"step": steps, "episodes": played.state_dict(), "rng": rng.bit_generator.state})
        save_s = time.perf_counter() - start
        size = resume.path.stat().st_size
        start = time.perf_counter()
        fresh = Episodes(game, params, context=8)
        fresh.load_state_dict(resume.load()["episodes"])
        restore_s = time.perf_counter() - start
    assert fresh.lengths == played.lengths
    return {"protocol": protocol, "game": game, "episodes": episodes, "steps": steps,
            "env_ms_per_agent_step": 1000 * step_s, "save_ms": 1000 * save_s, "state_bytes": size,
            "restore_ms_with_env_construction": 1000 * restore_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_resume.json")
    args = parser.parse_args()
    records = [measure(protocol, args.game, args.episodes, args.steps) for protocol in ("jowa", "standard")]
    result = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
