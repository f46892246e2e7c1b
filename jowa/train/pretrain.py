"""`jowa pretrain --size NAME`: two-stage pretraining of one JOWA size on all pretraining games (spec 4.4).

Stage 1 (steps 1 .. critic_after) trains the world model alone (observation, reward and termination
losses, weight 1, Q head frozen). At step critic_after + 1 both AdamW moments and learning rates start
afresh and stage 2 trains everything: world losses x supervised_weight + C51 TD + CQL, the world groups at
stage2_world_lr (the configured 5e-5; the reference's single run keeps 1e-4 there, gotcha 22). The
target head is copied from the Q head after every step that is a multiple of target_update. Segments
are drawn uniformly from all games' segments pooled (spec 1.5), from the fixed token stores.

Runs as one process or under `torchrun` with the batch split over ranks (see `jowa.train.runtime`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jowa.core.config import params_help, parse_section
from jowa.models.world_action import JOWA, JOWAConfig
from jowa.train.params import ModelArch, PretrainParams
from jowa.train.run import TrainingRun, file_identity, sha256_file
from jowa.train.runtime import runtime
from jowa.train.segments import open_token_pool, tokenizer_shape
from jowa.train.world_step import Stage, WorldTrainer
from jowa.weights.checkpoints import save_model


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(PretrainParams, "pretrain"))
    parser.add_argument("--size", required=True, help="the model's name (a key of params.yaml's models)")
    parser.add_argument(
        "--model", required=True, help="the size's architecture (models.<size>) as JSON, or a params file"
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="the tokenizer the tokens came from")
    parser.add_argument("--stores", type=Path, nargs="+", required=True, help="the pretraining stores")
    parser.add_argument("--tokens", type=Path, nargs="+", required=True, help="their token arrays, in order")
    parser.add_argument("--out", type=Path, required=True, help="the model .safetensors to write")
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="resumable state, metrics.jsonl and TensorBoard events"
    )
    parser.add_argument("--device", help="torch device (default: this rank's GPU if any, else the CPU)")


def stage_at(step: int, params: PretrainParams) -> Stage:
    """The stage step `step` (1-based) belongs to."""
    if step <= params.critic_after:
        return Stage("world", critic=False, world_lr=params.world_lr, supervised_weight=1.0)
    return Stage("critic", True, params.stage2_world_lr, params.supervised_weight)


def model_config(
    arch: ModelArch, params: PretrainParams, vocab_size: int, tokens_per_frame: int
) -> JOWAConfig:
    return JOWAConfig.from_arch(
        arch.model_dump(), max_blocks=params.segment_length, obs_vocab=vocab_size,
        tokens_per_block=tokens_per_frame + 1, num_atoms=params.atoms, vmin=params.vmin, vmax=params.vmax,
    )  # fmt: skip


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, PretrainParams, "pretrain")
    arch = parse_section(args.model, ModelArch, f"models.{args.size}")
    vocab_size, tokens_per_frame = tokenizer_shape(args.tokenizer)
    with runtime(precision=params.precision, compile=params.compile, device=args.device) as rt:
        local, micro = rt.share(params.batch, params.micro_batch, "pretrain")
        pool = open_token_pool(
            args.stores, args.tokens, rt, length=params.segment_length, stride=params.segment_stride
        )
        torch.manual_seed(params.seed)
        config = model_config(arch, params, vocab_size, tokens_per_frame)
        trainer = WorldTrainer(JOWA(config), rt, params, micro)
        run = TrainingRun(
            args.run_dir, rt, total_steps=params.steps, checkpoint_every=params.checkpoint_every,
            log_every=params.log_every, description=f"pretrain {args.size}", quiet=args.quiet,
            fingerprint={
                "params": params.model_dump(mode="json"), "arch": arch.model_dump(), "seed": params.seed,
                "inputs": [file_identity(p) for p in [args.tokenizer, *args.stores, *args.tokens]],
            },
        )  # fmt: skip
        state = run.resume()
        start = 0 if state is None else state["step"]
        trainer.enter(stage_at(max(start, 1), params))
        if state is not None:
            trainer.load_state_dict(state)
        run.say(f"{len(pool)} segments of {len(args.stores)} games, {local} per rank per step on {rt.device}")

        def step(step: int) -> dict[str, torch.Tensor]:
            stage = stage_at(step, params)
            if stage != trainer.stage:
                run.say(f"step {step}: stage {stage.name} starts with fresh optimizers")
                trainer.enter(stage)
            return trainer.step(step, pool.draw(params.batch, params.seed, step))

        run.loop(
            start, step, state_fn=trainer.state_dict,
            info_fn=lambda step: {"stage": trainer.stage.name, **trainer.learning_rates()},
            samples_per_step=params.batch, tokens_per_step=params.batch * config.max_tokens,
        )  # fmt: skip
        if rt.is_main:
            meta = {
                "phase": "pretrain", "size": args.size, "steps": params.steps,
                "params": params.model_dump(mode="json"), "tokenizer_sha256": sha256_file(args.tokenizer),
                "games": sorted({store.meta["game"] for store in pool.stores}),
            }  # fmt: skip
            save_model(args.out, trainer.model.cpu(), config, meta)
        run.finish()
