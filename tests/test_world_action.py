"""The JOWA model against the reference: the tiny fixture's outputs, the released layouts and counts.

The tiny fixture (tests/reference/tiny_fixture) holds reference-layout weights of a 2-layer model and
the reference's outputs on 4 segments, in eval mode with the Q ensemble's dropout at 0 (spec gotcha 20).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.models.transformer import flash_attn_func
from jowa.models.world_action import JOWA, SIZES, JOWAConfig, JOWAOutput, count_parameters
from jowa.weights.checkpoints import from_reference
from jowa.weights.state_files import CheckpointError

REFERENCE = Path(__file__).resolve().parent / "reference"
FIXTURE = REFERENCE / "tiny_fixture"
TINY_ARCH = {"layers": 2, "heads": 2, "width": 64, "q_hidden": 32, "q_ensemble": 2, "q_dropout": 0.0}


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def reference_state() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "tiny_jowa_state.npz"))


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value) for name, value in np.load(FIXTURE / "tiny_io.npz").items()}


@pytest.fixture(scope="module")
def tiny_model(reference_state: dict[str, np.ndarray]) -> JOWA:
    return from_reference(reference_state, TINY_ARCH).eval()


@pytest.fixture(scope="module")
def full_output(tiny_model: JOWA, io: dict[str, torch.Tensor]) -> JOWAOutput:
    with torch.no_grad():
        return tiny_model(io["tokens"], io["tasks"])


def test_full_context_matches_reference(full_output: JOWAOutput, io: dict[str, torch.Tensor]) -> None:
    out = full_output
    assert out.obs_logits.shape == (4, 288, 2048)
    assert_close(out.obs_logits[:2], io["logits_observations_first2"])
    assert_close(out.reward_logits, io["logits_rewards"])
    assert_close(out.end_logits, io["logits_ends"])
    assert_close(out.q_logits, io["logits_q"])
    assert_close(out.q_target_logits, io["logits_q_target"])


def test_partial_context_matches_reference(tiny_model: JOWA, io: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        out = tiny_model(io["tokens"][:, :100], io["tasks"])
    assert out.obs_logits.shape == (4, 98, 2048)
    assert out.end_logits.shape == (4, 2, 2)
    assert_close(out.obs_logits[:1], io["part_logits_observations_first1"])
    assert_close(out.reward_logits, io["part_logits_rewards"])
    assert_close(out.q_logits, io["part_logits_q"])


def decode_in_chunks(model: JOWA, tokens: torch.Tensor, tasks: torch.Tensor, chunks: list[int]) -> dict:
    """Feed `tokens` through a KV cache chunk by chunk; concatenate each head's outputs over positions."""
    cache = model.new_kv_cache()
    outputs = []
    start = 0
    for size in chunks:
        outputs.append(model(tokens[:, start : start + size], tasks, cache))
        start += size
    assert start == tokens.shape[1] == cache.length
    return {
        "obs": torch.cat([out.obs_logits for out in outputs], dim=1),
        "reward": torch.cat([out.reward_logits for out in outputs], dim=1),
        "end": torch.cat([out.end_logits for out in outputs], dim=1),
        "q": torch.cat([out.q_logits for out in outputs], dim=2),
        "q_target": torch.cat([out.q_target_logits for out in outputs], dim=2),
    }


# One token at a time through the first two blocks and at the end; chunks starting at every kind of slot.
@pytest.mark.parametrize("chunks", [[1] * 75 + [219] + [1] * 2, [100, 1, 1, 36, 37, 2, 119], [35, 2, 259]])
def test_kv_cache_decoding_equals_full_forward(
    tiny_model: JOWA, io: dict[str, torch.Tensor], full_output: JOWAOutput, chunks: list[int]
) -> None:
    rows = slice(1, 3)  # a right-padded and a left-padded segment
    with torch.no_grad():
        decoded = decode_in_chunks(tiny_model, io["tokens"][rows], io["tasks"][rows], chunks)
    assert_close(decoded["obs"], full_output.obs_logits[rows])
    assert_close(decoded["reward"], full_output.reward_logits[rows])
    assert_close(decoded["end"], full_output.end_logits[rows])
    assert_close(decoded["q"], full_output.q_logits[:, rows])
    assert_close(decoded["q_target"], full_output.q_target_logits[:, rows])


def test_kv_cache_rows_can_be_selected_and_continued(tiny_model: JOWA, io: dict[str, torch.Tensor]) -> None:
    rows = torch.tensor([2, 0, 2])
    tokens, tasks = io["tokens"], io["tasks"]
    with torch.no_grad():
        full = tiny_model(tokens[rows, :150], tasks[rows])
        cache = tiny_model.new_kv_cache()
        tiny_model(tokens[:, :110], tasks, cache)
        continued = tiny_model(tokens[rows, 110:150], tasks[rows], cache.select(rows))
    assert_close(continued.q_logits, full.q_logits[:, :, -1:])
    assert_close(continued.obs_logits, full.obs_logits[:, -39:])


def test_kv_cache_overflow_is_an_error(tiny_model: JOWA, io: dict[str, torch.Tensor]) -> None:
    cache = tiny_model.new_kv_cache()
    with torch.no_grad():
        tiny_model(io["tokens"], io["tasks"], cache)
        with pytest.raises(ValueError, match="exceed the 296-token window"):
            tiny_model(io["tokens"][:, :1], io["tasks"], cache)


@pytest.mark.skipif(flash_attn_func is not None, reason="flash-attn is installed")
def test_flash_backend_without_flash_attn_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs flash-attn"):
        JOWA(JOWAConfig.from_arch(TINY_ARCH), attention="flash")


def test_unknown_attention_backend_is_an_error() -> None:
    with pytest.raises(ValueError, match="'auto', 'sdpa' or 'flash', not 'xformers'"):
        JOWA(JOWAConfig.from_arch(TINY_ARCH), attention="xformers")


def test_attention_backend_is_not_part_of_the_architecture(reference_state: dict[str, np.ndarray]) -> None:
    assert "attention_backend" not in {field.name for field in dataclasses.fields(JOWAConfig)}
    model = from_reference(reference_state, TINY_ARCH, attention="sdpa")
    assert model.transformer.attention == "sdpa"
    assert {block.attn.backend for block in model.transformer.blocks} == {"sdpa"}
    assert from_reference(reference_state, TINY_ARCH).transformer.attention == "auto"


def test_dropout_is_off_in_eval_mode_including_the_q_ensemble() -> None:
    torch.manual_seed(0)
    model = JOWA(JOWAConfig.from_arch({**TINY_ARCH, "q_dropout": 0.5}))
    tokens = torch.randint(0, 18, (2, 74))
    tasks = torch.tensor([3, 49])
    with torch.no_grad():
        model.eval()
        first, second = model(tokens, tasks), model(tokens, tasks)
        model.train()
        third, fourth = model(tokens, tasks), model(tokens, tasks)
    for name in ("obs_logits", "reward_logits", "q_logits", "q_target_logits"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), rtol=0, atol=0)
    assert not torch.equal(third.obs_logits, fourth.obs_logits)
    assert not torch.equal(third.q_logits, fourth.q_logits)
    assert model.q_target_head.training is False


def test_q_ensemble_dropout_acts_in_train_mode_alone() -> None:
    """With every backbone dropout at 0, train-mode randomness can only come from the Q ensemble."""
    torch.manual_seed(0)
    model = JOWA(JOWAConfig.from_arch({**TINY_ARCH, "q_dropout": 0.5, "dropout": 0.0})).train()
    tokens, tasks = torch.randint(0, 18, (2, 37)), torch.tensor([3, 49])
    with torch.no_grad():
        first, second = model(tokens, tasks), model(tokens, tasks)
    torch.testing.assert_close(first.obs_logits, second.obs_logits, rtol=0, atol=0)
    torch.testing.assert_close(first.q_target_logits, second.q_target_logits, rtol=0, atol=0)
    assert not torch.equal(first.q_logits[0], second.q_logits[0])
    assert not torch.equal(first.q_logits[1], second.q_logits[1])


def test_target_head_is_frozen_and_hard_updated() -> None:
    torch.manual_seed(0)
    model = JOWA(JOWAConfig.from_arch(TINY_ARCH))
    assert not any(parameter.requires_grad for parameter in model.q_target_head.parameters())
    torch.testing.assert_close(model.q_target_head.out_weight, model.q_head.out_weight)
    with torch.no_grad():
        model.q_head.out_weight.add_(1.0)
    assert not torch.equal(model.q_target_head.out_weight, model.q_head.out_weight)
    model.update_target()
    assert torch.equal(model.q_target_head.out_weight, model.q_head.out_weight)


def test_initialization_follows_the_spec() -> None:
    torch.manual_seed(0)
    model = JOWA(
        JOWAConfig.from_arch({"layers": 2, "heads": 2, "width": 256, "q_hidden": 128, "q_ensemble": 2})
    )
    assert abs(model.observation_embedding.weight.std().item() - 0.02) < 1e-3
    assert abs(model.transformer.blocks[0].mlp[0].weight.std().item() - 0.02) < 1e-3
    assert torch.count_nonzero(model.reward_head[0].bias) == 0
    assert torch.equal(model.transformer.ln_f.weight, torch.ones(256))
    # The Q ensemble keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) Linear init (gotcha 18).
    bound = 1 / 256**0.5
    assert model.q_head.in_weight.abs().max() <= bound
    assert model.q_head.in_weight.std() > 0.5 * bound
    assert torch.equal(model.q_head.norm1_weight, torch.ones(2, 128))


def test_optimizer_groups_follow_the_reference() -> None:
    model = JOWA(JOWAConfig.from_arch(TINY_ARCH))
    with pytest.raises(TypeError):
        model.configure_optimizers(1e-4, 5e-5, 0.01)  # keyword-only: params.yaml names every value
    with pytest.raises(TypeError):
        model.configure_optimizers(world_lr=1e-4, critic_lr=5e-5)  # no default weight decay
    optimizer = model.configure_optimizers(
        world_lr=1e-4, critic_lr=5e-5, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8
    )
    groups = {group["name"]: group for group in optimizer.param_groups}
    ids = {name: {id(parameter) for parameter in group["params"]} for name, group in groups.items()}
    assert id(model.transformer.blocks[0].attn.qkv.weight) in ids["world_decay"]
    assert id(model.transformer.blocks[0].attn.qkv.bias) in ids["world_no_decay"]
    assert id(model.position_embedding.weight) in ids["world_no_decay"]
    assert id(model.task_embedding_action.weight) in ids["world_no_decay"]
    assert ids["critic"] == {id(parameter) for parameter in model.q_head.parameters()}
    assert (groups["world_decay"]["lr"], groups["world_decay"]["weight_decay"]) == (1e-4, 0.01)
    assert (groups["world_no_decay"]["lr"], groups["world_no_decay"]["weight_decay"]) == (1e-4, 0.0)
    assert (groups["critic"]["lr"], groups["critic"]["weight_decay"]) == (5e-5, 0.01)
    trainable = {id(parameter) for parameter in model.parameters() if parameter.requires_grad}
    assert set().union(*ids.values()) == trainable and sum(map(len, ids.values())) == len(trainable)


def test_optimizer_with_a_frozen_q_head_has_no_critic_group() -> None:
    """Stage 1 trains the world model alone: the frozen Q head must not reach the optimizer."""
    model = JOWA(JOWAConfig.from_arch(TINY_ARCH))
    model.q_head.requires_grad_(False)
    model.observation_embedding.weight.requires_grad_(False)
    optimizer = model.configure_optimizers(
        world_lr=1e-4, critic_lr=5e-5, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8
    )
    assert [group["name"] for group in optimizer.param_groups] == ["world_decay", "world_no_decay"]
    grouped = [id(parameter) for group in optimizer.param_groups for parameter in group["params"]]
    trainable = [id(parameter) for parameter in model.parameters() if parameter.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert id(model.observation_embedding.weight) not in grouped
    assert not {id(parameter) for parameter in model.q_head.parameters()} & set(grouped)


def test_config_from_size_name_or_mapping() -> None:
    assert JOWAConfig.from_arch("150M") == JOWAConfig(
        layers=12, heads=12, width=768, q_hidden=1792, q_ensemble=3
    )
    assert JOWAConfig.from_arch(SIZES["40M"], q_dropout=0.0).q_dropout == 0.0
    with pytest.raises(ValueError, match="unknown JOWA size"):
        JOWAConfig.from_arch("100M")
    with pytest.raises(ValueError, match=r"missing keys \['q_ensemble'\].*unknown keys \['members'\]"):
        JOWAConfig.from_arch({"layers": 2, "heads": 2, "width": 64, "q_hidden": 32, "members": 2})


# Spec 3.5: the JOWA module (frozen target Q copy included), its trainable part, totals with the tokenizer.
PINNED_COUNTS = {
    "40M": {"jowa_module": 19_109_681, "jowa_trainable": 17_416_091, "q_head": 1_693_590,
            "reference_name": 37_873_330, "trainable_total": 21_463_580},
    "70M": {"jowa_module": 53_349_681, "jowa_trainable": 50_567_579, "q_head": 2_782_102,
            "reference_name": 72_113_330, "trainable_total": 54_615_068},
    "150M": {"jowa_module": 127_778_185, "jowa_trainable": 109_045_447, "q_head": 18_732_738,
             "reference_name": 146_541_834, "trainable_total": 113_092_936},
}  # fmt: skip
ROUNDED_NAMES = {"40M": ("37.87", "21.46"), "70M": ("72.11", "54.62"), "150M": ("146.54", "113.09")}


@pytest.fixture(scope="module")
def released_layouts() -> dict:
    return json.loads((REFERENCE / "jowa_state_dict_shapes.json").read_text())


def released_state_dict(
    layout: dict[str, list[int]], indices: dict[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """Weights as meta tensors (shapes only, no memory); the `*.indices` buffers with their real positions."""
    return {
        name: torch.from_numpy(indices[name])
        if name.endswith(".indices")
        else torch.empty(shape, device="meta")
        for name, shape in layout.items()
    }


@pytest.mark.parametrize("size", sorted(SIZES))
def test_released_layout_loads_and_counts_are_pinned(
    size: str, released_layouts: dict, reference_state: dict[str, np.ndarray]
) -> None:
    state = released_state_dict(released_layouts[f"JOWA_{size}"], reference_state)
    counts = count_parameters(from_reference(state, size))
    assert {name: counts[name] for name in PINNED_COUNTS[size]} == PINNED_COUNTS[size]
    with torch.device("meta"):
        assert count_parameters(JOWA(JOWAConfig.from_arch(size))) == counts
    assert (
        f"{counts['reference_name'] / 1e6:.2f}",
        f"{counts['trainable_total'] / 1e6:.2f}",
    ) == ROUNDED_NAMES[size]


def test_mismatched_reference_state_dict_names_the_culprits(
    released_layouts: dict, reference_state: dict[str, np.ndarray]
) -> None:
    state = released_state_dict(released_layouts["JOWA_40M"], reference_state)
    missing = dict(state)
    del missing["transformer.blocks.3.attn.proj.bias"]
    with pytest.raises(
        CheckpointError, match=r"missing keys \(1\): transformer\.blocks\.3\.attn\.proj\.bias$"
    ):
        from_reference(missing, "40M")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): transformer\.blocks\.4\.ln1\.weight$"):
        from_reference({**state, "transformer.blocks.4.ln1.weight": torch.empty(512)}, "40M")
    # A 150M checkpoint's 3-member Q head does not fit the 1-member 40M head.
    wrong = {**state, "head_q.head_module.params.1": torch.empty(3, 768, device="meta")}
    with pytest.raises(
        CheckpointError,
        match=r"wrong shapes \(1\): head_q\.head_module\.params\.1 \(expected \[1, 768\], got \[3, 768\]\)$",
    ):
        from_reference(wrong, "40M")
    shifted = {**state, "head_q.indices": state["head_q.indices"] + 1}
    with pytest.raises(CheckpointError, match=r"wrong values \(1\): head_q\.indices \(expected \[35, 72, "):
        from_reference(shifted, "40M")
    # 150M has 12 layers and a 3-member Q head, 70M 6 layers and 1 member.
    with pytest.raises(
        CheckpointError,
        match=r"unexpected keys \(96\): transformer\.blocks\.6\.ln1\.weight, .*; wrong shapes \(20\): head_q",
    ):
        from_reference(released_state_dict(released_layouts["JOWA_150M"], reference_state), "70M")
    # Every problem at once, in one message.
    del wrong["transformer.blocks.3.attn.proj.bias"]
    wrong["transformer.blocks.4.ln1.weight"] = torch.empty(512)
    with pytest.raises(CheckpointError) as caught:
        from_reference(wrong, "40M")
    assert re.search(
        r"missing keys \(1\): .*unexpected keys \(1\): .*wrong shapes \(1\): ", str(caught.value)
    )
