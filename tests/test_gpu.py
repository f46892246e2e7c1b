"""What only a GPU exercises (`pytest -m gpu`; skipped without CUDA, see conftest): the compiled bf16
step against eager, a fused-AdamW resume, the pool on the device with no host sync in the step, and
`jowa tokenize` on the GPU. Synthetic token stores (`jowa.data.token_stores`) stand in for real ones."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.cli import main as jowa_main
from jowa.core.config import load_params
from jowa.data.token_stores import write_token_store
from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA
from jowa.train.pretrain import model_config, stage_at
from jowa.train.run import MetricSums
from jowa.train.runtime import Runtime
from jowa.train.segments import DevicePool, open_token_pool
from jowa.train.train_tokenizer import tokenizer_config
from jowa.train.world_step import WorldTrainer
from jowa.weights.tokenizer_checkpoints import save_tokenizer

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent
PARAMS = load_params(ROOT / "config" / "smoke.yaml")
SETTINGS = PARAMS.pretrain.model_copy(update={"critic_after": 1, "batch": 8})


def gpu(compile: bool = False) -> Runtime:
    return Runtime(torch.device("cuda", 0), 0, 1, "bf16", compile)


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("gpu")
    vocab = PARAMS.tokenizer.arch.vocab_size
    return [write_token_store(root / f"store{i}", 3000, i, vocab=vocab) for i in range(2)]


def trainer_on(rt: Runtime) -> WorldTrainer:
    torch.manual_seed(0)
    config = model_config(PARAMS.models["tiny-s"], SETTINGS, PARAMS.tokenizer.arch.vocab_size, 36)
    trainer = WorldTrainer(JOWA(config), rt, SETTINGS, micro_batch=8)
    trainer.enter(stage_at(2, SETTINGS))
    trainer.model.eval()  # no dropout: compiled and eager compute one function
    return trainer


def pool_on(rt: Runtime, files: list[tuple[Path, Path]]) -> DevicePool:
    return open_token_pool([s for s, _ in files], [t for _, t in files], rt, length=8, stride=4)


def weights(trainer: WorldTrainer) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in trainer.model.parameters()])


def test_the_compiled_step_equals_eager_in_bf16(pool_files: list) -> None:
    results = []
    for compile in (False, True):
        rt = gpu(compile)
        trainer, pool = trainer_on(rt), pool_on(rt, pool_files)
        for step in range(1, 4):
            trainer.step(step, pool.draw(8, 0, step))
        results.append(weights(trainer))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=2e-2)


def test_the_pool_lives_on_the_gpu_and_the_step_never_syncs(pool_files: list) -> None:
    rt = gpu(compile=True)
    pool, trainer = pool_on(rt, pool_files), trainer_on(rt)
    assert pool.pool.tokens.is_cuda and pool.draw(8, 0, 1).obs_tokens.is_cuda
    sums = MetricSums()
    for step in range(1, 4):  # compilation and the first fused AdamW step may sync
        sums.add(step, trainer.step(step, pool.draw(8, 0, step)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(4, 8):
            sums.add(step, trainer.step(step, pool.draw(8, 0, step)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(np.isfinite(v) for v in sums.means().values())


def test_a_fused_adamw_resume_continues_exactly(pool_files: list) -> None:
    rt = gpu()
    pool = pool_on(rt, pool_files)
    whole = trainer_on(rt)
    assert all(group["fused"] for group in whole.optimizer.param_groups)
    for step in range(1, 3):
        whole.step(step, pool.draw(8, 0, step))
    saved = copy.deepcopy(whole.state_dict())  # the live tensors change as training goes on
    for step in range(3, 5):
        whole.step(step, pool.draw(8, 0, step))
    resumed = trainer_on(rt)
    resumed.load_state_dict(saved)
    for step in range(3, 5):
        resumed.step(step, pool.draw(8, 0, step))
    torch.testing.assert_close(weights(resumed), weights(whole), rtol=0, atol=0)


def test_tokenize_on_the_gpu_matches_the_encoder(tmp_path: Path) -> None:
    store_dir, _ = write_token_store(tmp_path / "store", 2000, 0)
    frames = np.load(store_dir / "frames.npy", mmap_mode="r+")
    frames[:] = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    frames.flush()
    torch.manual_seed(0)
    tokenizer = Tokenizer(tokenizer_config(PARAMS.tokenizer)).eval()
    save_tokenizer(tmp_path / "tokenizer.safetensors", tokenizer)
    out = tmp_path / "tokens.npy"
    args = ["tokenize", "--tokenizer", tmp_path / "tokenizer.safetensors", "--store", store_dir, "--out", out]
    assert jowa_main(["-q", *map(str, args), "--batch", "64", "--device", "cuda"]) == 0  # 2 chunks
    tokens = np.load(out)
    tokenizer = tokenizer.cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        x = torch.from_numpy(np.array(frames[:1024])).cuda().unsqueeze(1).float() / 255
        expected = tokenizer.encode(x).cpu().numpy()
    assert tokens.shape == (2000, 36) and (tokens[:1024] == expected).mean() > 0.99
