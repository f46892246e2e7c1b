"""The static-shape KV cache on random tiny JOWA models (CPU, float32): it computes what a growing cache
(keys concatenated, attention over exactly the cached tokens) and a full forward compute, with the same
shapes on every pass; rows reload in place; a planner pass runs only the heads it needs; bf16 matmul
weights under autocast compute what autocast computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jowa.core import games
from jowa.models import transformer
from jowa.models.world_action import JOWA, JOWAConfig
from jowa.planning.search import WorldModel, beam_search, greedy

ARCH = {"layers": 2, "heads": 2, "width": 32, "q_hidden": 32, "q_ensemble": 2}
VOCAB = 16
TASK = games.task_id("Seaquest")


def tiny_model(seed: int) -> JOWA:
    torch.manual_seed(seed)
    return JOWA(JOWAConfig.from_arch(ARCH, obs_vocab=VOCAB)).eval()


def window(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (observation ids, actions at slot 36) and tasks."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(VOCAB, (rows, length), generator=generator)
    actions = torch.arange(length) % 37 == 36
    tokens[:, actions] = torch.randint(18, (rows, int(actions.sum())), generator=generator)
    return tokens, torch.full((rows,), TASK)


def growing_cache_hidden(model: JOWA, tokens: torch.Tensor, tasks: torch.Tensor, chunks: list[int]):
    """The previous cache, written out: per layer the keys and values so far, concatenated, and each
    chunk attending exactly those with a bottom-right causal mask (a shape that grows every token)."""
    keys: list[list[torch.Tensor]] = [[] for _ in model.transformer.blocks]
    values: list[list[torch.Tensor]] = [[] for _ in model.transformer.blocks]
    hidden, start = [], 0
    for size in chunks:
        x = model._embed(tokens[:, start : start + size], tasks, torch.arange(start, start + size))
        batch, width = x.shape[0], x.shape[2]
        for index, block in enumerate(model.transformer.blocks):
            attn, h = block.attn, block.ln1(x)
            q, k, v = attn.project_qkv(h)
            keys[index].append(k)
            values[index].append(v)
            mask = torch.ones(size, start + size, dtype=torch.bool).tril(diagonal=start)
            y = F.scaled_dot_product_attention(
                q, torch.cat(keys[index], 2), torch.cat(values[index], 2), attn_mask=mask
            )
            x = x + attn.proj(y.transpose(1, 2).reshape(batch, size, width))
            x = x + block.mlp(block.ln2(x))
        hidden.append(model.transformer.ln_f(x))
        start += size
    return torch.cat(hidden, dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunks", [[221] + [1] * 75, [1] * 40 + [100, 37], [35, 2, 1, 258]])
def test_static_cache_equals_a_growing_cache_and_a_full_forward(seed: int, chunks: list[int]) -> None:
    model = tiny_model(seed)
    tokens, tasks = window(3, sum(chunks), seed)
    with torch.no_grad():
        full = model.hidden(tokens, tasks)
        growing = growing_cache_hidden(model, tokens, tasks, chunks)
        cache, parts, start = model.new_kv_cache(), [], 0
        for size in chunks:
            parts.append(model.hidden(tokens[:, start : start + size], tasks, cache))
            start += size
    static = torch.cat(parts, dim=1)
    assert cache.length == int(cache.position) == sum(chunks)
    torch.testing.assert_close(static, growing)
    torch.testing.assert_close(static, full)


def test_every_decode_pass_attends_the_same_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(0)
    tokens, tasks = window(2, 260, 0)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    attention = F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((tuple(k.shape), tuple(kwargs["attn_mask"].shape)))
        return attention(q, k, v, **kwargs)

    cache = model.new_kv_cache()
    with torch.no_grad():
        model.hidden(tokens[:, :200], tasks, cache)
        storage = [layer.keys.data_ptr() for layer in cache.layers]
        monkeypatch.setattr(transformer.F, "scaled_dot_product_attention", recording)
        for position in range(200, 260):
            model.hidden(tokens[:, position : position + 1], tasks, cache)
    capacity = transformer.cache_capacity(296)
    assert capacity % 16 == 0 and capacity >= 296
    assert set(seen) == {((2, 2, capacity, 16), (1, capacity))} and len(seen) == 60 * 2
    assert [layer.keys.data_ptr() for layer in cache.layers] == storage  # written in place


def test_loading_rows_in_place_equals_selecting_copies() -> None:
    model = tiny_model(1)
    tokens, tasks = window(3, 150, 1)
    rows = torch.tensor([2, 2, 0])
    with torch.no_grad():
        cache = model.new_kv_cache()
        model.hidden(tokens[:, :110], tasks, cache)
        selected = cache.select(rows)
        storage = [layer.keys.data_ptr() for layer in cache.layers]
        cache.load(cache, rows)
        assert [layer.keys.data_ptr() for layer in cache.layers] == storage
        for layer, copy in zip(cache.layers, selected.layers, strict=True):
            assert torch.equal(layer.keys, copy.keys) and torch.equal(layer.values, copy.values)
        continued = model.hidden(tokens[rows, 110:150], tasks[rows], cache)
        full = model.hidden(tokens[rows, :150], tasks[rows])
    torch.testing.assert_close(continued, full[:, 110:])


def test_planner_passes_run_only_the_heads_they_need() -> None:
    world = WorldModel(tiny_model(2))
    tokens, tasks = window(4, 3 * 37 - 1, 2)
    calls: dict[str, int] = {}
    for name in ("observation_head", "reward_head", "end_head", "q_head", "q_target_head"):
        module = getattr(world.model, name)
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    greedy(world, tokens, tasks)
    assert calls == {"q_head": 1}  # no observation head over the context, no target head
    calls.clear()
    beam_search(world, tokens, tasks, width=2, horizon=2, gamma=0.99)
    # the root's Q; per imagined step: the action's reward, end and observation heads, 35 frame tokens'
    # observation head and the last token's Q head
    assert calls == {"q_head": 1 + 2, "reward_head": 2, "end_head": 2, "observation_head": 2 * 36}


def test_bf16_matmul_weights_under_autocast_compute_what_autocast_computes() -> None:
    model, tokens = tiny_model(3), window(2, 100, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(*tokens)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        after = model.matmul_weights_to_(torch.bfloat16)(*tokens)
    assert model.transformer.blocks[0].attn.qkv.weight.dtype == model.q_head.in_weight.dtype == torch.bfloat16
    assert model.position_embedding.weight.dtype == model.transformer.ln_f.weight.dtype == torch.float32
    for name in ("obs_logits", "reward_logits", "end_logits", "q_logits"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
