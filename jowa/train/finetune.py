"""`jowa finetune`: a pretrained JOWA (and its tokenizer) trained on one held-out game's set (spec 6).

The critic trains from step 0 with the world losses x supervised_weight (0.5), world and critic lr 5e-5,
segments of the model's context starting at every step (stride 1), the target head re-copied at the
start. With `tune_tokenizer` (the reference's setting) each step first updates the tokenizer on
`tokenizer_batch` frames drawn from the real steps of the batch, then encodes the batch's frames with it;
otherwise the set's token array is read, as in pretraining.

Task ids: a held-out game keeps its own id (its index in jowa.core.games.GAMES) in training and evaluation.
The reference remaps held-out games to a pretraining game's id while training (Robotank -> Phoenix, with
Phoenix's action mask) and not at evaluation (spec gotcha 13); with one id throughout, the embedding
that is fine-tuned is the one evaluated, and the game's own action mask selects TD targets.

The result is the final checkpoint. The reference instead keeps the checkpoint with the best test return
(>= 0.8 x the best so far; gotcha 23), a selection on test episodes: `finetune.selection.rule:
best_test_return` does that (`jowa.train.selection`) and says so in the checkpoint's metadata.
With `imagination.enabled`, after `imagination.after` steps `imagination.imagined_batch` of each step's
segments are imagined (`jowa.train.imagination`) and feed the critic losses only
(`WorldTrainer.step(..., imagined=...)`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from jowa.core.config import params_help, parse_section
from jowa.core.errors import MissingInputError
from jowa.data.loader import SegmentPool, fetch
from jowa.data.store import TrainingStore
from jowa.models.batch import Batch
from jowa.train.imagination import ImaginedBuffer, imagined_segments
from jowa.train.params import FinetuneParams
from jowa.train.run import TrainingRun, file_identity, sha256_file, step_generator
from jowa.train.runtime import runtime
from jowa.train.segments import DevicePool
from jowa.train.selection import Selection
from jowa.train.tokenize import load_tokens
from jowa.train.tokenizer_step import TokenizerTrainer
from jowa.train.world_step import Stage, WorldTrainer
from jowa.weights.checkpoints import load_model, save_model
from jowa.weights.tokenizer_checkpoints import load_tokenizer, save_tokenizer


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(FinetuneParams, "finetune"))
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model .safetensors")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the pretrained tokenizer .safetensors")
    parser.add_argument("--store", type=Path, required=True, help="the held-out game's fine-tuning set")
    parser.add_argument("--tokens", type=Path, help="the set's token array (needed unless tune_tokenizer)")
    parser.add_argument("--out", type=Path, required=True, help="the fine-tuned model .safetensors")
    parser.add_argument("--out-tokenizer", type=Path, required=True, help="the fine-tuned tokenizer")
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="resumable state, metrics.jsonl and TensorBoard events"
    )
    parser.add_argument("--device", help="torch device (default: this rank's GPU if any, else the CPU)")


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, FinetuneParams, "finetune")
    store = TrainingStore.open(args.store)
    if not params.tune_tokenizer and args.tokens is None:
        raise MissingInputError("finetune.tune_tokenizer is false: give the set's token array with --tokens")
    with runtime(precision=params.precision, compile=params.compile, device=args.device) as rt:
        local, micro = rt.share(params.batch, params.micro_batch, "finetune")
        tokenizer_local, _ = rt.share(params.tokenizer_batch, None, "finetune.tokenizer")
        model, pretrained_meta = load_model(args.model, rt.device)
        model.update_target()
        tokenizer, _ = load_tokenizer(args.tokenizer, rt.device)
        length = model.config.max_blocks
        if params.tune_tokenizer:
            tokens = np.zeros((len(store), 0), dtype=np.int16)  # encoded every step by the tuned tokenizer
            frames = torch.from_numpy(np.array(store.frames)).to(rt.device)  # a writable copy
        else:
            tokens = load_tokens(args.tokens, store)
        pool = DevicePool(
            SegmentPool([store], [tokens], length=length, stride=params.segment_stride, device=rt.device),
            [store], rt,
        )  # fmt: skip
        torch.manual_seed(params.seed)
        trainer = WorldTrainer(model, rt, params, micro)
        trainer.enter(Stage("finetune", True, params.world_lr, params.supervised_weight))
        tokenizer_trainer = TokenizerTrainer(
            tokenizer, rt, lr=params.tokenizer_lr, betas=params.adam_betas, eps=params.adam_eps,
            grad_clip=params.tokenizer_grad_clip,
        )  # fmt: skip
        inputs = [args.model, args.tokenizer, args.store] + ([args.tokens] if args.tokens else [])
        run = TrainingRun(
            args.run_dir, rt, total_steps=params.steps, checkpoint_every=params.checkpoint_every,
            log_every=params.log_every, description=f"finetune {store.meta['game']}", quiet=args.quiet,
            fingerprint={"params": params.model_dump(mode="json"), "seed": params.seed,
                         "inputs": [file_identity(path) for path in inputs]},
        )  # fmt: skip

        imagination = params.imagination
        imagined_local = rt.share(imagination.imagined_batch, None, "finetune.imagination")[0]
        buffer = ImaginedBuffer(imagination.buffer_factor * len(pool))

        selection = Selection(params.selection, store.meta["game"], params.precision)

        def state() -> dict:
            return {**trainer.state_dict(), **tokenizer_trainer.state_dict(), "imagined": buffer.state_dict(),
                    "selection": selection.state_dict()}  # fmt: skip

        saved = run.resume()
        if saved is not None:
            trainer.load_state_dict(saved)
            tokenizer_trainer.load_state_dict(saved)
            buffer.load_state_dict(saved["imagined"])
            selection.load_state_dict(saved["selection"])
        run.say(f"{len(pool)} segments of {store.meta['game']}, {local} per rank per step on {rt.device}")

        def segments(index: torch.Tensor) -> Batch:
            """Real segments `index`, encoded by the tokenizer being tuned when it is."""
            if not params.tune_tokenizer:
                return fetch(pool.pool, index, rt.device)
            rows, _ = pool.pool.rows(index)
            return pool.pool.batch(index, tokenizer_trainer.encode(frames[rows].unsqueeze(2) / 255))

        def step(step: int) -> dict[str, torch.Tensor]:
            losses: dict[str, torch.Tensor] = {}
            index = pool.index(params.batch, params.seed, step)
            if params.tune_tokenizer:
                rows, mask = pool.pool.rows(index)
                real = rows[mask]
                generator = step_generator(params.seed, step, 1)
                pick = torch.randint(len(real), (tokenizer_local,), generator=generator).to(real.device)
                losses |= tokenizer_trainer.step(frames[real[pick]].unsqueeze(1) / 255)
            imagined = None
            if imagination.enabled and step > imagination.after:
                index = index[: len(index) - imagined_local]  # the rest of the batch is imagined
                prompts = segments(pool.index(params.batch, params.seed + 1, step))
                imagined = imagined_segments(
                    trainer.model, prompts, buffer, imagination, gamma=params.gamma, count=imagined_local,
                    generator=step_generator(params.seed, step, 2), bf16=params.precision == "bf16",
                )  # fmt: skip
                losses["imagined_buffer"] = torch.tensor(float(len(buffer)), device=rt.device)
            losses |= trainer.step(step, segments(index), imagined)
            if selection.due(step, params.steps):  # the same episodes on every rank: no gathering needed
                mean = selection.evaluate(step, trainer.model, tokenizer_trainer.tokenizer)
                losses["selection_return"] = torch.tensor(mean, device=rt.device)
            return losses

        run.loop(
            0 if saved is None else saved["step"], step, state_fn=state,
            info_fn=lambda step: {"stage": "finetune", **trainer.learning_rates()},
            samples_per_step=params.batch, tokens_per_step=params.batch * model.config.max_tokens,
        )  # fmt: skip
        chosen = selection.apply(trainer.model, tokenizer_trainer.tokenizer)
        if rt.is_main:
            meta = {
                "phase": "finetune", "game": store.meta["game"], "task_id": store.meta["task_id"],
                "quality": store.meta.get("quality"), "steps": params.steps,
                "params": params.model_dump(mode="json"), "pretrained_sha256": sha256_file(args.model),
                "pretrained": pretrained_meta, "selection": chosen,
            }  # fmt: skip
            save_model(args.out, trainer.model.cpu(), model.config, meta)
            save_tokenizer(args.out_tokenizer, tokenizer_trainer.tokenizer.cpu(), {"finetuned": meta})
        run.finish()
