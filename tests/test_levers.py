"""Issue 19's levers compute the training step's numbers as before: fused q/k/v, sliced head positions
and the chunked observation loss, each against the way it replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from jowa.core.config import load_params
from jowa.core.games import task_id
from jowa.models.batch import Batch
from jowa.models.linear_cross_entropy import chunked_linear_cross_entropy
from jowa.models.losses import IGNORE, world_model_losses
from jowa.models.world_action import JOWA, JOWAConfig, Levers
from jowa.train.runtime import Runtime
from jowa.train.world_step import Stage, WorldTrainer
from jowa.weights.state_files import CheckpointError

TINY = JOWAConfig.from_arch({"layers": 2, "heads": 2, "width": 32, "q_hidden": 16, "q_ensemble": 2})
VOCAB = TINY.obs_vocab


def twins(first: Levers, second: Levers) -> tuple[JOWA, JOWA]:
    """Two models with the same weights, computing with different levers, in eval mode (no dropout)."""
    torch.manual_seed(0)
    one = JOWA(TINY, levers=first)
    other = JOWA(TINY, levers=second)
    other.load_state_dict(one.state_dict())
    return one.eval(), other.eval()


def inputs(batch: int = 3, length: int = 296) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 18, (batch, length), generator=generator)
    return tokens, torch.tensor([task_id("Pong"), task_id("Alien"), task_id("Assault")][:batch])


def world_batch(tokens: torch.Tensor, tasks: torch.Tensor, padded_steps: int = 2) -> Batch:
    """The segments of `tokens`, the last `padded_steps` steps of row 0 padding (targets ignored)."""
    steps = tokens.view(len(tasks), 8, 37)
    mask = torch.ones(len(tasks), 8, dtype=torch.bool)
    mask[0, 8 - padded_steps :] = False
    zeros = torch.zeros(len(tasks), 8)
    return Batch(steps[:, :, :36], steps[:, :, 36], zeros.sign(), zeros, mask, tasks)


def heads(output) -> dict[str, torch.Tensor]:
    names = ("obs_logits", "reward_logits", "end_logits", "q_logits", "q_target_logits")
    return {name: getattr(output, name) for name in names}


def test_fused_qkv_computes_the_three_projections() -> None:
    fused, separate = twins(Levers(), Levers(fused_qkv=False))
    assert fused.transformer.blocks[0].attn.fused_qkv and not separate.transformer.blocks[0].attn.fused_qkv
    tokens, tasks = inputs()
    outputs = [model(tokens, tasks) for model in (fused, separate)]
    for name, value in heads(outputs[0]).items():
        torch.testing.assert_close(value, heads(outputs[1])[name], msg=name)
    for output in outputs:
        (output.obs_logits.logsumexp(-1).mean() + output.q_logits.square().mean()).backward()
    grads = [model.transformer.blocks[0].attn.qkv.weight.grad for model in (fused, separate)]
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def index_ops(model: JOWA, *args, **kwargs) -> set[str]:
    """The indexing ops (gathers by index tensor) a forward pass runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(*args, **kwargs)
    return {event.key for event in profile.key_averages() if event.key in ("aten::index", "aten::gather")}


def test_sliced_heads_give_the_gathered_rows_exactly_without_index_kernels() -> None:
    sliced, gathered = twins(Levers(), Levers(sliced_heads=False))
    tokens, tasks = inputs()
    with torch.no_grad():
        for name, value in heads(sliced(tokens, tasks)).items():
            assert torch.equal(value, heads(gathered(tokens, tasks))[name]), name
        assert index_ops(sliced, tokens, tasks) == set()
        assert index_ops(gathered, tokens, tasks) == {"aten::index"}
        # Whole steps after cached ones slice too; a window of part of a step gathers.
        for start, length in ((74, 111), (74, 50)):
            caches = [model.new_kv_cache() for model in (sliced, gathered)]
            for model, cache in zip((sliced, gathered), caches, strict=True):
                model(tokens[:, :start], tasks, cache)
            outputs = [
                heads(model(tokens[:, start : start + length], tasks, cache))
                for model, cache in zip((sliced, gathered), caches, strict=True)
            ]
            for name, value in outputs[0].items():
                assert torch.equal(value, outputs[1][name]), (start, length, name)


@pytest.mark.parametrize("chunk", [7, 50, 64])  # a chunk that does not divide the rows, one, all rows
def test_chunked_linear_cross_entropy_equals_the_full_logits(chunk: int) -> None:
    torch.manual_seed(0)
    features = torch.randn(50, 16, requires_grad=True)
    layer = torch.nn.Linear(16, 40)
    targets = torch.randint(0, 40, (50,))
    targets[::6] = IGNORE
    results = []
    for chunked in (False, True):
        if chunked:
            loss = chunked_linear_cross_entropy(
                features, layer.weight, layer.bias, targets, chunk_rows=chunk, ignore_index=IGNORE
            )
        else:
            loss = F.cross_entropy(F.linear(features, layer.weight, layer.bias), targets, ignore_index=IGNORE)
        grads = torch.autograd.grad(loss, (features, layer.weight, layer.bias))
        results.append((loss, *grads))
    for full, chunked in zip(*results, strict=True):
        torch.testing.assert_close(chunked, full)
    with pytest.raises(ValueError, match="chunk_rows must be >= 1, not 0"):
        chunked_linear_cross_entropy(
            features, layer.weight, layer.bias, targets, chunk_rows=0, ignore_index=0
        )


def largest_saved(loss_of: callable) -> int:
    """Elements of the largest tensor autograd keeps for the backward of `loss_of()`."""
    sizes = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_of().backward()
    return max(sizes)


def test_the_chunked_observation_loss_equals_the_full_one_and_keeps_no_full_logits() -> None:
    full, chunked = twins(Levers(obs_loss_chunk=0), Levers(obs_loss_chunk=100))
    tokens, tasks = inputs()
    batch = world_batch(tokens, tasks)

    def loss(model: JOWA) -> torch.Tensor:
        chunk = model.levers.obs_loss_chunk
        output = model(tokens, tasks, obs_logits=chunk == 0)
        assert (output.obs_logits is None) == (chunk > 0) and (output.obs_features is None) == (chunk == 0)
        losses = world_model_losses(
            output, batch, supervised_weight=0.1, obs_layer=model.observation_head[-1], obs_chunk=chunk
        )
        return sum(losses.values())

    losses = [loss(model) for model in (full, chunked)]
    torch.testing.assert_close(losses[1], losses[0])
    for value in losses:
        value.backward()
    for (name, ours), theirs in zip(chunked.named_parameters(), full.parameters(), strict=True):
        if theirs.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, msg=name)
    rows = len(tasks) * 287
    assert largest_saved(lambda: loss(full)) >= rows * VOCAB  # the full logits are kept for backward
    assert largest_saved(lambda: loss(chunked)) < rows * VOCAB / 10


def test_levers_reject_a_negative_chunk_and_none_switches_every_lever_off() -> None:
    with pytest.raises(ValueError, match="obs_loss_chunk must be >= 0 rows, not -1"):
        Levers(obs_loss_chunk=-1)
    assert Levers.none() == Levers(fused_qkv=False, sliced_heads=False, obs_loss_chunk=0)


def test_a_resume_state_from_before_fused_qkv_is_refused_in_one_line() -> None:
    settings = load_params(Path(__file__).resolve().parent.parent / "config/smoke.yaml").pretrain
    trainer = WorldTrainer(JOWA(TINY), Runtime(torch.device("cpu"), 0, 1, "fp32", False), settings, 4)
    trainer.enter(Stage("world", False, settings.world_lr, 1.0))
    state = trainer.state_dict()
    trainer.load_state_dict(state)  # today's layout resumes
    old = {name.replace(".attn.qkv.", ".attn.query."): tensor for name, tensor in state["model"].items()}
    with pytest.raises(CheckpointError, match=r"before the q/k/v projections were fused \(issue 19\)"):
        trainer.load_state_dict({**state, "model": old})
