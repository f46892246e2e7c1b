"""Evaluation speed: `jowa evaluate`'s loop with all episodes batched against one episode at a time, and
several evaluations sharing one GPU.

Plays a game in real ALE with random weights (JOWA of a params-file size, its tokenizer) through
`jowa.planning.play.play`, exactly as `jowa evaluate` does, each episode capped at `--steps` agent
steps. Mode `planning` (default): for beam search (K, H, context) and greedy, `--episodes` episodes
batched, then episodes one at a time, timed on `--single` of them and extrapolated (the rate is per
env step, so extrapolation is the measured rate); on CUDA also batched beam search without CUDA graphs.
A warm-up call per batch size captures its graphs first. Then the planner alone, without ALE and the
tokenizer: ms per beam search and greedy call on `--episodes` random contexts (`planner_call` records)
and a profiler summary of one beam search call (top ops by CUDA and by CPU time).

Mode `concurrent`: for each N of `--processes`, N processes started together each play one batched beam
evaluation (as N `jowa evaluate` jobs sharing a GPU through `jowa gpu-run --share`); reports their
aggregate env-steps/s.

    python benchmarks/eval_planning.py --out $OUT/eval_planning.jsonl          # GPU: 150M, K=2 H=2, 16 eps
    python benchmarks/eval_planning.py --mode concurrent --out $OUT/eval_concurrent.jsonl
    python benchmarks/eval_planning.py --params config/smoke.yaml --size tiny-m --steps 12 --tag cpu

Records are JSON lines, each written and flushed when measured (a time limit keeps what was done):
`planner`, `size`, `episodes`, `batched`, `ms_per_agent_step` (one batched call serves every episode;
one at a time, a step of one episode), `env_steps_per_s`, `gpu_max_allocated_gb`; batched ones also
`loop_ms_per_agent_step` (the same play with the planner swapped for NOOP: the loop around it) and
`planner_ms_per_agent_step` (the rest). Targets (issue 20):
batched beam K=2 H=2 on JOWA-150M <= 25 ms per agent step and >= 8x one at a time; greedy <= 5 ms.
Default output `benchmarks/results/eval_planning[_TAG].jsonl`, the profile beside it (`.profile.txt`).
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from jowa.core import games
from jowa.core.config import load_params
from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA
from jowa.planning import play as play_module
from jowa.planning.contexts import Contexts
from jowa.planning.params import PlannerSettings
from jowa.planning.play import play
from jowa.planning.search import WorldModel, beam_search, greedy
from jowa.train.pretrain import model_config
from jowa.train.train_tokenizer import tokenizer_config

ROOT = Path(__file__).resolve().parent.parent


def build(args: argparse.Namespace, graphs: bool) -> tuple[WorldModel, Any, Any]:
    """(world model, tokenizer, params) with random weights on the GPU if any."""
    params = load_params(args.params)
    params = params.model_copy(update={"eval": params.eval.model_copy(update={"max_steps": args.steps})})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vocab = params.tokenizer.arch.vocab_size
    model = JOWA(model_config(params.models[args.size], params.pretrain, vocab, 36)).to(device)
    tokenizer = Tokenizer(tokenizer_config(params.tokenizer)).to(device).eval()
    world = WorldModel(model, bf16=params.eval.precision == "bf16", graphs=graphs)
    return world, tokenizer, params


def synchronize(world: WorldModel) -> None:
    if world.device.type == "cuda":
        torch.cuda.synchronize()


def memory_gb(world: WorldModel) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if world.device.type == "cuda" else None


def play_timed(world: WorldModel, tokenizer: Any, params: Any, settings: PlannerSettings | None,
               game: str, episodes: int) -> dict[str, Any]:  # fmt: skip
    """One `play` of `episodes` episodes at once: env steps, agent steps (batched calls), seconds."""
    eval_params = params.eval.model_copy(update={"episodes": episodes})
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(world)
    start = time.perf_counter()
    result = play(world, tokenizer, game, eval_params, settings, progress=False)
    synchronize(world)
    seconds = time.perf_counter() - start
    return {"env_steps": sum(result.lengths), "agent_steps": max(result.lengths), "seconds": seconds,
            "start": time.time() - seconds, "end": time.time()}  # fmt: skip


def loop_timed(world: WorldModel, tokenizer: Any, params: Any, settings: PlannerSettings | None,
               game: str, episodes: int) -> dict[str, Any]:  # fmt: skip
    """`play_timed` with the planner swapped for action 0 (NOOP, valid in every game) on the device: the
    loop around the planner alone (frames up, tokenizer, contexts, batches, the action transfer, ALE)."""
    planner = play_module.choose
    play_module.choose = lambda world, tokens, tasks, settings, gamma: tasks.new_zeros(len(tasks))
    try:
        return play_timed(world, tokenizer, params, settings, game, episodes)
    finally:
        play_module.choose = planner


def write(out: TextIO, record: dict[str, Any]) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    out.write(line + "\n")
    out.flush()


def machine(world: WorldModel) -> dict[str, Any]:
    cuda = world.device.type == "cuda"
    return {"kind": "machine", "device": str(world.device), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": torch.cuda.get_device_name() if cuda else None,
            "threads": torch.get_num_threads(), "host": platform.node()}  # fmt: skip


def planning(args: argparse.Namespace, out: TextIO) -> None:
    cuda = torch.cuda.is_available()
    world, tokenizer, params = build(args, graphs=cuda)
    write(out, machine(world))
    beam = PlannerSettings(beam_width=args.beam_width, horizon=args.horizon, context=args.context)
    warm = params.model_copy(update={"eval": params.eval.model_copy(update={"max_steps": 3})})

    def record(planner: str, settings: PlannerSettings | None, model: WorldModel, batched: bool,
               measured: dict[str, Any], episodes: int) -> dict[str, Any]:  # fmt: skip
        chosen = settings.model_dump() if settings else {"context": params.eval.greedy_context}
        agent_steps = measured["agent_steps"] if batched else measured["env_steps"]
        return {
            "kind": "planning", "planner": planner, "size": args.size, "game": args.game,
            "episodes": args.episodes, "batched": batched, "graphs": model.graphs, "settings": chosen,
            "steps_per_episode": args.steps, "measured_episodes": episodes,
            "env_steps": measured["env_steps"], "seconds": measured["seconds"],
            "ms_per_agent_step": 1000 * measured["seconds"] / agent_steps,
            "env_steps_per_s": measured["env_steps"] / measured["seconds"],
            "gpu_max_allocated_gb": memory_gb(model),
        }  # fmt: skip

    for planner, settings in (("beam", beam), ("greedy", None)):
        for episodes in (args.episodes, 1):  # captures each batch size's graphs, warms the kernels
            play_timed(world, tokenizer, warm, settings, args.game, episodes)
        together = play_timed(world, tokenizer, params, settings, args.game, args.episodes)
        batched = record(planner, settings, world, True, together, args.episodes)
        loop = loop_timed(world, tokenizer, params, settings, args.game, args.episodes)
        loop_ms = 1000 * loop["seconds"] / loop["agent_steps"]
        batched |= {
            "loop_ms_per_agent_step": loop_ms,
            "planner_ms_per_agent_step": batched["ms_per_agent_step"] - loop_ms,
        }
        write(out, batched)
        singles = [play_timed(world, tokenizer, params, settings, args.game, 1) for _ in range(args.single)]
        total = {key: sum(single[key] for single in singles) for key in ("env_steps", "seconds")}
        one_at_a_time = record(planner, settings, world, False, total, args.single)
        write(out, one_at_a_time)
        ratio = batched["env_steps_per_s"] / one_at_a_time["env_steps_per_s"]
        write(out, {"kind": "speedup", "planner": planner, "size": args.size, "batched_over_one": ratio})
    if cuda:  # the same batched beam search without graphs: what the graphs save
        eager, tokenizer, params = build(args, graphs=False)
        play_timed(eager, tokenizer, warm, beam, args.game, args.episodes)
        together = play_timed(eager, tokenizer, params, beam, args.game, args.episodes)
        write(out, record("beam", beam, eager, True, together, args.episodes))
        del eager
    planner_calls(world, args, beam, out)


def planner_calls(world: WorldModel, args: argparse.Namespace, beam: PlannerSettings, out: TextIO) -> None:
    """The planner alone (no ALE, no tokenizer) on `--episodes` random full contexts: mean ms per call
    of beam search and greedy, then the top ops of one beam search call, by device and by CPU time."""
    task = games.task_id(args.game)
    generator = torch.Generator().manual_seed(0)

    def batch(steps: int) -> torch.Tensor:
        contexts, everyone = Contexts(args.episodes, steps, world.device), range(args.episodes)
        for _ in range(steps):
            frames = torch.randint(world.model.config.obs_vocab, (args.episodes, 36), generator=generator)
            contexts.observe(everyone, frames.to(world.device))
            contexts.act(everyone, torch.zeros(args.episodes, dtype=torch.long, device=world.device))
        return contexts.batch(everyone, steps)

    tasks = torch.full((args.episodes,), task, device=world.device)
    plan_tokens, greedy_tokens = batch(min(beam.context, 8 - beam.horizon)), batch(args.greedy_context)
    calls = {
        "beam": lambda: beam_search(world, plan_tokens, tasks, width=beam.beam_width, horizon=beam.horizon,
                                    gamma=0.99),
        "greedy": lambda: greedy(world, greedy_tokens, tasks),
    }  # fmt: skip
    for planner, call in calls.items():
        call()
        synchronize(world)
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        synchronize(world)
        ms = 1000 * (time.perf_counter() - start) / args.calls
        write(out, {"kind": "planner_call", "planner": planner, "size": args.size, "contexts": args.episodes,
                    "graphs": world.graphs, "ms_per_call": ms, "calls": args.calls})  # fmt: skip
    activities = [torch.profiler.ProfilerActivity.CPU]
    cuda = world.device.type == "cuda"
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        calls["beam"]()
        synchronize(world)
    averages = prof.key_averages()
    shape = f"{args.episodes} contexts of {plan_tokens.shape[1]} tokens"
    tables = [f"one batched beam search call: {args.size}, {shape}, K={beam.beam_width} H={beam.horizon}, "
              f"graphs={world.graphs}\n"]  # fmt: skip
    for key in ("self_cuda_time_total", "self_cpu_time_total") if cuda else ("self_cpu_time_total",):
        tables.append(f"\n== by {key} ==\n" + averages.table(sort_by=key, row_limit=25))
    path = Path(out.name).with_suffix(".profile.txt")
    path.write_text("".join(tables))
    print(f"wrote {path}", flush=True)


def concurrent_worker(args: argparse.Namespace, barrier: Any, results: Any) -> None:
    """One evaluation process: build, warm up, wait for the others, play, report its window."""
    world, tokenizer, params = build(args, graphs=torch.cuda.is_available())
    beam = PlannerSettings(beam_width=args.beam_width, horizon=args.horizon, context=args.context)
    warm = params.model_copy(update={"eval": params.eval.model_copy(update={"max_steps": 3})})
    play_timed(world, tokenizer, warm, beam, args.game, args.episodes)
    barrier.wait()
    measured = play_timed(world, tokenizer, params, beam, args.game, args.episodes)
    results.put({**measured, "gpu_max_allocated_gb": memory_gb(world)})


def concurrent(args: argparse.Namespace, out: TextIO) -> None:
    context = mp.get_context("spawn")  # CUDA cannot be forked
    for count in args.processes:
        barrier, results = context.Barrier(count), context.Queue()
        workers = [context.Process(target=concurrent_worker, args=(args, barrier, results))
                   for _ in range(count)]  # fmt: skip
        for worker in workers:
            worker.start()
        measured = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
        window = max(m["end"] for m in measured) - min(m["start"] for m in measured)
        steps = sum(m["env_steps"] for m in measured)
        write(out, {"kind": "concurrent", "planner": "beam", "size": args.size, "game": args.game,
                    "processes": count, "episodes": args.episodes, "batched": True,
                    "steps_per_episode": args.steps, "env_steps": steps, "seconds": window,
                    "env_steps_per_s": steps / window,
                    "per_process_env_steps_per_s": [m["env_steps"] / m["seconds"] for m in measured],
                    "gpu_max_allocated_gb": [m["gpu_max_allocated_gb"] for m in measured],
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("planning", "concurrent"), default="planning")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--size", default="150M")
    parser.add_argument("--game", default="SpaceInvaders")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--single", type=int, default=2, help="episodes timed one at a time")
    parser.add_argument("--steps", type=int, default=40, help="agent steps per episode")
    parser.add_argument("--beam-width", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--context", type=int, default=6)
    parser.add_argument("--greedy-context", type=int, default=8, help="steps of a planner-only greedy call")
    parser.add_argument("--calls", type=int, default=10, help="planner-only calls timed")
    parser.add_argument(
        "--processes", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4],
        help="concurrent mode: the process counts, comma-separated",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="the JSON-lines file")
    parser.add_argument("--tag", help="default --out: benchmarks/results/eval_planning[_TAG].jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = "eval_planning" if args.mode == "planning" else "eval_concurrent"
    out_path = (
        args.out or ROOT / "benchmarks" / "results" / f"{stem}{'_' + args.tag if args.tag else ''}.jsonl"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("a") as out:  # appended, as every benchmark here: a session collects one file
        (planning if args.mode == "planning" else concurrent)(args, out)
    print(f"wrote {out_path}", flush=True)


if __name__ == "__main__":
    main()
