"""GPU check of the JOWA world-action model: bf16 accuracy against float32, KV cache, step time, memory.

Builds JOWA-150M (or a tiny model with `--tiny`) and a synthetic batch of 64 x 296 tokens with padded,
terminal and cut segments, then for each attention backend (SDPA, and flash-attn when it imports):

* runs forward + backward of the stage-2 loss (0.1 x world-model losses + C51 TD + CQL) under bf16
  autocast, in eval mode so that dropout does not blur the comparison, and compares head logits, loss
  values and the gradient norm against a float32 run with TF32 off. Logit errors are max |bf16 - fp32|
  / max |fp32| per head, loss errors are relative;
* decodes the first sequences incrementally through the KV cache (a 100-token prefix, single tokens,
  then the rest) and compares with a full bf16 forward of the same backend (checks gotcha 16);
* times training steps (train mode, forward + backward + clip-norm 1.0 + AdamW) and records the peak
  GPU memory.

On CUDA one more variant, "sdpa-flash-kernel", runs the SDPA path with PyTorch's own FlashAttention-2
kernel forced (the training forward is plain causal, so SDPA may pick it; forcing it makes a failure
visible instead of a silent fallback). The KV-cache part of that variant also allows the memory-efficient
kernel, since flash kernels take no explicit mask.

Results go to `benchmarks/results/gpu_check_world_action.json` (`..._tiny.json` with `--tiny`). Not
run in CI; `--tiny` runs on a CPU in seconds as a smoke check of the script itself.

    python benchmarks/gpu_check_world_action.py            # on the GPU machine
    python benchmarks/gpu_check_world_action.py --tiny     # CPU smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from jowa.core.games import PRETRAIN_GAMES, task_id
from jowa.models.batch import Batch
from jowa.models.losses import critic_losses, task_action_masks, world_model_losses
from jowa.models.transformer import flash_attn_func
from jowa.models.world_action import JOWA, JOWAConfig, JOWAOutput

ROOT = Path(__file__).resolve().parent.parent
TINY_ARCH = {"layers": 2, "heads": 2, "width": 64, "q_hidden": 32, "q_ensemble": 2}
# bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%); errors grow a few-fold through the layers.
LOGIT_TOLERANCE = 3e-2
LOSS_TOLERANCE = 1e-2
KV_TOLERANCE = 3e-2
HEADS = ("obs_logits", "reward_logits", "end_logits", "q_logits", "q_target_logits")


def synthetic_batch(config: JOWAConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random segments shaped like the training data: valid actions, right/left padding, terminals."""
    generator = torch.Generator().manual_seed(0)
    steps = config.max_blocks
    tasks = torch.tensor([task_id(game) for game in PRETRAIN_GAMES])[
        torch.randint(len(PRETRAIN_GAMES), (batch,), generator=generator)
    ]
    masks = task_action_masks(tasks)
    valid_actions = [mask.nonzero().squeeze(1) for mask in masks]
    actions = torch.stack(
        [choices[torch.randint(len(choices), (steps,), generator=generator)] for choices in valid_actions]
    )
    obs_tokens = torch.randint(
        config.obs_vocab, (batch, steps, config.tokens_per_block - 1), generator=generator
    )
    mask_padding = torch.ones(batch, steps, dtype=torch.bool)
    ends = torch.zeros(batch, steps, dtype=torch.long)
    quarter = batch // 4
    mask_padding[:quarter, 5:] = False  # episodes that ended: terminal, then right padding
    ends[:quarter, 4] = 1
    mask_padding[quarter : 2 * quarter, :3] = False  # left padding
    rewards = torch.randint(-1, 2, (batch, steps), generator=generator).float() * mask_padding
    tokens = torch.cat([obs_tokens, actions.unsqueeze(-1)], dim=-1).view(batch, -1)
    data = {
        "tokens": tokens,
        "tasks": tasks,
        "obs_tokens": obs_tokens,
        "actions": actions,
        "rewards": rewards,
        "ends": ends,
        "mask_padding": mask_padding,
    }
    return {name: tensor.to(device) for name, tensor in data.items()}


def stage2_losses(model: JOWA, data: dict[str, torch.Tensor]) -> tuple[JOWAOutput, dict[str, torch.Tensor]]:
    output = model(data["tokens"], data["tasks"])
    batch = Batch(
        obs_tokens=data["obs_tokens"],
        actions=data["actions"],
        rewards=data["rewards"],
        ends=data["ends"],
        mask=data["mask_padding"],
        tasks=data["tasks"],
    )
    losses = world_model_losses(output, batch, supervised_weight=0.1)
    atoms = model.config.atoms(data["tokens"].device)
    losses |= critic_losses(output, batch, atoms=atoms, gamma=0.99, cql_weight=0.1)
    return output, losses


def forward_backward(model: JOWA, data: dict[str, torch.Tensor], bf16: bool) -> dict[str, Any]:
    """Head outputs, loss values and gradient norm of one eval-mode forward + backward."""
    model.eval().zero_grad(set_to_none=True)
    device_type = data["tokens"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        output, losses = stage2_losses(model, data)
    sum(losses.values()).backward()
    grads = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    return {
        "outputs": {name: getattr(output, name).detach().float() for name in HEADS},
        "losses": {name: value.item() for name, value in losses.items()},
        "grad_norm": torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])
        ).item(),
    }


def normalized_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def compare(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    logits = {name: normalized_error(run["outputs"][name], reference["outputs"][name]) for name in HEADS}
    losses = {
        name: abs(value - reference["losses"][name]) / abs(reference["losses"][name])
        for name, value in run["losses"].items()
    }
    grad = abs(run["grad_norm"] - reference["grad_norm"]) / reference["grad_norm"]
    return {
        "max_normalized_logit_error": logits,
        "loss_relative_error": losses,
        "grad_norm_relative_error": grad,
        "losses": run["losses"],
        "ok": max(logits.values()) <= LOGIT_TOLERANCE and max(losses.values()) <= LOSS_TOLERANCE,
    }


@torch.no_grad()
def kv_cache_error(model: JOWA, data: dict[str, torch.Tensor], rows: int = 4) -> dict[str, Any]:
    """Incremental decoding (100-token prefix, 37 single tokens, the rest) vs one full forward, in bf16."""
    model.eval()
    tokens, tasks = data["tokens"][:rows], data["tasks"][:rows]
    device_type = tokens.device.type
    chunks = [100] + [1] * 37 + [tokens.shape[1] - 137]
    with torch.autocast(device_type, dtype=torch.bfloat16):
        full = model(tokens, tasks)
        cache, parts, start = model.new_kv_cache(), [], 0
        for size in chunks:
            parts.append(model(tokens[:, start : start + size], tasks, cache))
            start += size
    errors = {
        "obs_logits": normalized_error(
            torch.cat([part.obs_logits for part in parts], 1).float(), full.obs_logits.float()
        ),
        "q_logits": normalized_error(
            torch.cat([part.q_logits for part in parts], 2).float(), full.q_logits.float()
        ),
    }
    return {"max_normalized_error": errors, "ok": max(errors.values()) <= KV_TOLERANCE}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training_steps(model: JOWA, data: dict[str, torch.Tensor], warmup: int, iterations: int) -> dict:
    """Median seconds per bf16 training step and peak memory (GPU only)."""
    device = data["tokens"].device
    model.train()
    optimizer = model.configure_optimizers(
        world_lr=5e-5, critic_lr=5e-5, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    durations = []
    for index in range(warmup + iterations):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, losses = stage2_losses(model, data)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        synchronize(device)
        if index >= warmup:
            durations.append(time.perf_counter() - start)
    seconds = statistics.median(durations)
    return {
        "median_step_s": seconds,
        "tokens_per_s": data["tokens"].numel() / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def kernel_choice(variant: str, masked: bool) -> contextlib.AbstractContextManager:
    """SDPA kernels a variant may use; `masked` is for calls with an explicit mask (KV-cache decoding)."""
    if variant != "sdpa-flash-kernel":
        return contextlib.nullcontext()
    if masked:
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def check_backend(
    variant: str, config: JOWAConfig, state: dict[str, torch.Tensor], data: dict, reference: dict, args
) -> dict[str, Any]:
    backend = "flash" if variant == "flash" else "sdpa"
    model = JOWA(config, attention=backend).to(data["tokens"].device)
    model.load_state_dict(state)
    with kernel_choice(variant, masked=False):
        result = compare(forward_backward(model, data, bf16=True), reference)
    with kernel_choice(variant, masked=True):
        result["kv_cache"] = kv_cache_error(model, data)
    with kernel_choice(variant, masked=False):
        result["training_step"] = time_training_steps(model, data, args.warmup, args.iterations)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    config = JOWAConfig.from_arch(TINY_ARCH if args.tiny else args.size)
    model = JOWA(config, attention="sdpa").to(device)
    with torch.no_grad():  # a target head that differs from the online one, as during training
        for parameter in model.q_target_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    data = synthetic_batch(config, args.batch, device)
    reference = forward_backward(model, data, bf16=False)
    del model
    variants = ["sdpa"]
    if device.type == "cuda":
        variants += ["sdpa-flash-kernel"] + (["flash"] if flash_attn_func is not None else [])
    results = {variant: check_backend(variant, config, state, data, reference, args) for variant in variants}
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "flash_attn_available": flash_attn_func is not None,
        "config": dataclasses.asdict(config) | {"size": "tiny" if args.tiny else args.size},
        "batch": args.batch,
        "tokens_per_sequence": config.max_tokens,
        "tolerances": {"logits": LOGIT_TOLERANCE, "losses": LOSS_TOLERANCE, "kv_cache": KV_TOLERANCE},
        "float32_losses": reference["losses"],
        "backends": results,
        "ok": all(result["ok"] and result["kv_cache"]["ok"] for result in results.values()),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, batch 4: a CPU smoke check")
    parser.add_argument("--size", default="150M", choices=["40M", "70M", "150M"])
    parser.add_argument("--batch", type=int, default=None, help="segments per batch (64, or 4 with --tiny)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 4 if args.tiny else 64
    if args.out is None:
        name = "gpu_check_world_action_tiny.json" if args.tiny else "gpu_check_world_action.json"
        args.out = ROOT / "benchmarks" / "results" / name
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
