"""`jowa train-tokenizer`: the VQ tokenizer, trained once on every pretraining store and shared by all sizes.

Frames are drawn uniformly from all pretraining stores' steps pooled (the reference draws them from the
world model's batch, which is uniform over segments and so nearly uniform over steps, padding frames
included; ours never draws padding). Difference from the reference (spec gotcha 9): the reference trains
the tokenizer jointly with the world model during stage 1, the world model reading tokens of a tokenizer
still changing; here it is trained first, for the same number of steps, so that the world model trains
on one fixed token store (`jowa tokenize`) and never touches frames, and all sizes share one tokenizer.
The README's practical path in the reference (stage 1, then a token cache) ends at the same place.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from jowa.core.config import params_help, parse_section
from jowa.data.store import TrainingStore
from jowa.models.tokenizer import Tokenizer
from jowa.models.tokenizer_config import TokenizerConfig
from jowa.train.frames import FrameSampler
from jowa.train.params import TokenizerParams
from jowa.train.run import TrainingRun, file_identity
from jowa.train.runtime import TrainingSetupError, runtime
from jowa.train.tokenizer_step import TokenizerTrainer
from jowa.weights.perceptual_weights import perceptual_source
from jowa.weights.tokenizer_checkpoints import load_lpips, save_tokenizer


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(TokenizerParams, "tokenizer"))
    parser.add_argument("--stores", type=Path, nargs="+", required=True, help="the pretraining stores")
    parser.add_argument("--out", type=Path, required=True, help="the tokenizer .safetensors to write")
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="resumable state, metrics.jsonl and TensorBoard events"
    )
    parser.add_argument("--device", help="torch device (default: this rank's GPU if any, else the CPU)")


def tokenizer_config(params: TokenizerParams) -> TokenizerConfig:
    config = TokenizerConfig(**params.arch.model_dump())
    if config.tokens_per_frame != 36:
        raise TrainingSetupError(
            f"tokenizer.arch gives {config.tokens_per_frame} tokens per frame; JOWA's blocks need a 6x6 grid"
        )
    return config


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, TokenizerParams, "tokenizer")
    stores = [TrainingStore.open(path) for path in args.stores]
    with runtime(precision=params.precision, compile=params.compile, device=args.device) as rt:
        rt.share(params.batch, None, "tokenizer")
        torch.manual_seed(params.seed)
        weights = params.perceptual_weights
        perceptual = load_lpips(perceptual_source(weights)) if weights else None
        tokenizer = Tokenizer(tokenizer_config(params), perceptual=perceptual)
        trainer = TokenizerTrainer(
            tokenizer,
            rt,
            lr=params.lr,
            betas=params.adam_betas,
            eps=params.adam_eps,
            grad_clip=params.grad_clip,
        )
        run = TrainingRun(
            args.run_dir, rt, total_steps=params.steps, checkpoint_every=params.checkpoint_every,
            log_every=params.log_every, description="tokenizer", quiet=args.quiet,
            fingerprint={"params": params.model_dump(mode="json"), "seed": params.seed,
                         "stores": [file_identity(path) for path in args.stores]},
        )  # fmt: skip
        if perceptual is None:
            run.say("no LPIPS weights (tokenizer.perceptual_weights): training without the perceptual loss")
        state = run.resume()
        if state is not None:
            trainer.load_state_dict(state)
        sampler = FrameSampler(stores, rt, batch=params.batch, seed=params.seed)
        try:
            run.loop(
                0 if state is None else state["step"],
                lambda step: trainer.step(sampler.frames(step)),
                state_fn=trainer.state_dict,
                info_fn=lambda step: {"stage": "tokenizer", "lr": params.lr},
                samples_per_step=params.batch,
                tokens_per_step=params.batch * tokenizer.config.tokens_per_frame,
            )
        finally:
            sampler.close()
        if rt.is_main:
            meta = {
                "params": params.model_dump(mode="json"),
                "stores": [str(path) for path in args.stores],
                "perceptual": perceptual is not None,
                "config": dataclasses.asdict(tokenizer.config),
            }
            save_tokenizer(args.out, tokenizer.cpu(), meta)
        run.finish()
