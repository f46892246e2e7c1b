"""Training on generated ALE data: tokenizer, tokens, two-stage pretraining, fine-tuning, resume, DDP.

Everything runs the real commands (in-process, or as subprocesses where a kill or torchrun is needed) on
stores subsampled from runs that `generate_run` plays in real ALE games, with tiny models on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa import cli
from jowa.core.config import load_params
from jowa.data.generate import generate_run
from jowa.data.loader import SegmentPool
from jowa.data.manifest import write_manifest
from jowa.data.store import TrainingStore
from jowa.data.subsample import build_store
from jowa.models.world_action import JOWA, Levers, count_parameters
from jowa.train.params import PretrainParams
from jowa.train.pretrain import model_config, stage_at
from jowa.train.run import TrainingDiverged, TrainingRun
from jowa.train.runtime import Runtime
from jowa.train.segments import DevicePool
from jowa.train.world_step import WorldTrainer
from jowa.weights.checkpoints import load_model
from jowa.weights.tokenizer_checkpoints import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GAMES = ("Pong", "Boxing")
CPU = Runtime(torch.device("cpu"), rank=0, world_size=1, precision="fp32", compile=False)
TOKENIZER = {
    "arch": {"vocab_size": 32, "embed_dim": 8, "z_channels": 8, "ch": 4, "ch_mult": [1, 1, 1],
             "num_res_blocks": 0, "attn_resolutions": [], "dropout": 0.0},
    "steps": 30, "batch": 16, "lr": 3e-3, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "grad_clip": 1.0,
    "perceptual_weights": None, "checkpoint_every": 10, "log_every": 5, "seed": 0, "precision": "bf16",
    "compile": False,
}  # fmt: skip
ARCH = {
    "layers": 1,
    "heads": 2,
    "width": 32,
    "q_hidden": 32,
    "q_ensemble": 2,
    "dropout": 0.1,
    "q_dropout": 0.01,
}
PRETRAIN = {
    "steps": 40, "critic_after": 20, "batch": 8, "micro_batch": None, "segment_length": 8,
    "segment_stride": 4, "world_lr": 1e-3, "stage2_world_lr": 5e-4, "critic_lr": 5e-4, "weight_decay": 0.01,
    "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "grad_clip": 1.0, "target_update": 5,
    "supervised_weight": 0.1, "gamma": 0.99, "cql_weight": 0.1, "atoms": 51, "vmin": -10.0, "vmax": 30.0,
    "checkpoint_every": 10, "log_every": 5, "seed": 0, "precision": "bf16", "compile": False,
}  # fmt: skip
FINETUNE = {
    **{key: PRETRAIN[key] for key in PRETRAIN if key not in {
        "critic_after", "stage2_world_lr", "segment_length", "atoms", "vmin", "vmax"}},
    "steps": 6, "segment_stride": 1, "supervised_weight": 0.5, "tune_tokenizer": True,
    "tokenizer_lr": 1e-3, "tokenizer_batch": 8, "tokenizer_grad_clip": 1.0, "checkpoint_every": 3,
    "log_every": 3, "imagination": {"enabled": True, "after": 3, "horizon": 2, "beam_width": 2,
                                    "imagined_batch": 4, "buffer_factor": 1},
    "selection": {"rule": "final", "every": 3, "episodes": 1, "max_steps": 12, "protocol": "jowa",
                  "context": 4},
}  # fmt: skip


def jowa(*args: str | Path) -> None:
    assert cli.main(["-q", *map(str, args)]) == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two games played in ALE, subsampled into stores; a tokenizer trained on them; their tokens."""
    root = tmp_path_factory.mktemp("train")
    stores = []
    for seed, game in enumerate(GAMES):
        replay = root / "raw" / game / "1" / "replay_logs"
        generate_run(game, replay, steps_per_run=700, capacity=350, sticky_actions=0.25,
                     max_episode_steps=120, seed=seed, progress=False)  # fmt: skip
        write_manifest(replay, root / "manifests" / f"{game}.tsv")
        store = root / "stores" / game
        build_store(game=game, replay_dirs={1: replay}, manifests={1: root / "manifests" / f"{game}.tsv"},
                    out=store, transitions_per_game=500, seed=0, progress=False)  # fmt: skip
        stores.append(store)
    tokenizer = root / "tokenizer.safetensors"
    jowa("train-tokenizer", "--params", json.dumps(TOKENIZER), "--stores", *stores,
         "--out", tokenizer, "--run-dir", root / "tokenizer-run")  # fmt: skip
    tokens = [store.with_name(store.name + ".tokens.npy") for store in stores]
    for store, out in zip(stores, tokens, strict=True):
        jowa("tokenize", "--tokenizer", tokenizer, "--store", store, "--out", out, "--batch", "64")
    return {"root": root, "stores": stores, "tokens": tokens, "tokenizer": tokenizer}


def pretrain_args(data: dict, out: Path, **params: object) -> list[str | Path]:
    return [
        "pretrain", "--params", json.dumps({**PRETRAIN, **params}), "--size", "tiny",
        "--model", json.dumps(ARCH), "--tokenizer", data["tokenizer"], "--stores", *data["stores"],
        "--tokens", *data["tokens"], "--out", out, "--run-dir", out.parent / "run",
    ]  # fmt: skip


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tokenizer_learns_and_tokens_are_its_codes_of_every_frame(data: dict, tmp_path: Path) -> None:
    logged = metrics(data["root"] / "tokenizer-run")
    assert [m["step"] for m in logged] == [5, 10, 15, 20, 25, 30]
    assert logged[-1]["tokenizer_reconstruction_loss"] < 0.7 * logged[0]["tokenizer_reconstruction_loss"]
    tokenizer, meta = load_tokenizer(data["tokenizer"])
    assert meta["perceptual"] is False and tokenizer.config.vocab_size == 32
    store = TrainingStore.open(data["stores"][0])
    tokens = np.load(data["tokens"][0])
    assert tokens.dtype == np.uint16 and tokens.shape == (len(store), 36)
    frames = torch.from_numpy(np.array(store.frames[:100])).unsqueeze(1).float() / 255
    np.testing.assert_array_equal(tokens[:100], tokenizer.eval().encode(frames).numpy())

    # a killed job's partial array is continued, not redone: rows marked before the stop are kept
    out = tmp_path / "tokens.npy"
    jowa("tokenize", "--tokenizer", data["tokenizer"], "--store", store.path, "--out", out, "--batch", "64")
    partial, progress = out.with_name("tokens.npy.partial"), out.with_name("tokens.npy.progress.json")
    shutil.copy(out, partial)
    np.lib.format.open_memmap(partial, mode="r+")[:50] = 7
    identity = json.loads(json.dumps({"tokenizer": _sha(data["tokenizer"]), "store": store.meta,
                                      "steps": len(store)}))  # fmt: skip
    progress.write_text(json.dumps({"identity": identity, "rows": 50}))
    out.unlink()
    jowa("tokenize", "--tokenizer", data["tokenizer"], "--store", store.path, "--out", out, "--batch", "64")
    resumed = np.load(out)
    assert (resumed[:50] == 7).all() and np.array_equal(resumed[50:], tokens[50:])
    assert not partial.exists() and not progress.exists()


def _sha(path: Path) -> str:
    from jowa.train.run import sha256_file

    return sha256_file(path)


def test_two_stage_pretraining_learns_and_switches_stage(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "pretrain" / "model.safetensors"
    jowa(*pretrain_args(data, out, steps=60, critic_after=30, log_every=10))
    logged = metrics(out.parent / "run")
    stage1, stage2 = logged[:3], logged[3:]
    assert [m["stage"] for m in logged] == ["world"] * 3 + ["critic"] * 3
    assert stage1[-1]["loss_obs"] < 0.92 * stage1[0]["loss_obs"]  # the world model learns
    assert all("loss_td_error" not in m and "lr_critic" not in m for m in stage1)
    assert all(m["lr"] == 1e-3 for m in stage1) and all(m["lr"] == 5e-4 == m["lr_critic"] for m in stage2)
    assert all(np.isfinite(m["loss_td_error"]) and m["samples_per_s"] > 0 for m in stage2)
    for key in (
        "step",
        "stage",
        "lr",
        "grad_norm",
        "samples_per_s",
        "tokens_per_s",
        "gpu_mem_gb",
        "loss_obs",
    ):
        assert key in logged[-1]
    model, meta = load_model(out)
    assert meta["games"] == sorted(GAMES) and model.config.obs_vocab == 32
    assert list((out.parent / "run" / "tensorboard").iterdir())
    assert not (out.parent / "run" / "state.pt").exists()


def test_stage_switch_resets_optimizers_and_target_copies_every_target_update(data: dict) -> None:
    params = PretrainParams.model_validate_json(
        json.dumps({**PRETRAIN, "critic_after": 3, "target_update": 2})
    )
    stores = [TrainingStore.open(path) for path in data["stores"]]
    tokens = [np.load(path) for path in data["tokens"]]
    pool = DevicePool(SegmentPool(stores, tokens, length=8, stride=4, device="cpu"), stores, CPU)
    torch.manual_seed(0)
    trainer = WorldTrainer(JOWA(model_config(load_params(ROOT / "config/smoke.yaml").models["tiny-s"], params,
                                             32, 36)), CPU, params, 8)  # fmt: skip

    def same_target() -> bool:
        online, target = trainer.model.q_head.state_dict(), trainer.model.q_target_head.state_dict()
        return all(torch.equal(online[name], target[name]) for name in online)

    for step in range(1, 9):
        stage = stage_at(step, params)
        if stage != trainer.stage:
            trainer.enter(stage)
            assert not trainer.optimizer.state  # fresh moments at the start of each stage
        trainer.step(step, pool.draw(params.batch, params.seed, step))
        steps_taken = {int(s["step"]) for s in trainer.optimizer.state.values()}
        assert steps_taken == {step if step <= 3 else step - 3}
        lrs = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
        if step <= 3:
            assert lrs == {"world_decay": 1e-3, "world_no_decay": 1e-3} and same_target()
        else:
            assert lrs == {"world_decay": 5e-4, "world_no_decay": 5e-4, "critic": 5e-4}
            assert same_target() == (step % 2 == 0), step  # copied after steps 4, 6, 8 only


def test_optimizer_groups_of_the_40M_model_follow_spec_4_5() -> None:
    paper = load_params(ROOT / "params.yaml")
    model = JOWA(model_config(paper.models["40M"], paper.pretrain, 2048, 36))
    trainer = WorldTrainer(model, CPU, paper.pretrain, 64)
    trainer.enter(stage_at(1, paper.pretrain))
    stage1 = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    assert stage1 == {"world_decay": (1e-4, 0.01), "world_no_decay": (1e-4, 0.0)}
    trainer.enter(stage_at(250_001, paper.pretrain))
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {name: (g["lr"], g["weight_decay"], g["betas"], g["eps"]) for name, g in groups.items()} == {
        "world_decay": (5e-5, 0.01, (0.9, 0.999), 1e-8),
        "world_no_decay": (5e-5, 0.0, (0.9, 0.999), 1e-8),
        "critic": (5e-5, 0.01, (0.9, 0.999), 1e-8),
    }
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["critic"] == {id(p) for p in model.q_head.parameters()}  # biases and norms decayed too
    assert id(model.task_embedding_action.weight) in ids["world_no_decay"]
    assert id(model.observation_head[0].weight) in ids["world_decay"]
    assert id(model.observation_head[0].bias) in ids["world_no_decay"]
    assert (
        sum(p.numel() for g in groups.values() for p in g["params"])
        == count_parameters(model)["jowa_trainable"]
    )


def test_the_compiled_step_is_one_graph_and_equals_the_eager_step(data: dict) -> None:
    """torch.compile covers the forward pass with the loss heads as one graph (no data-dependent break)
    and trains the same weights as eager execution (CPU inductor; on a GPU the same path runs in bf16)."""
    params = PretrainParams.model_validate_json(json.dumps({**PRETRAIN, "critic_after": 1}))
    stores = [TrainingStore.open(path) for path in data["stores"]]
    tokens = [np.load(path) for path in data["tokens"]]
    pool = DevicePool(SegmentPool(stores, tokens, length=8, stride=4, device="cpu"), stores, CPU)
    arch = load_params(ROOT / "config/smoke.yaml").models["tiny-s"]
    weights = []
    for compiled in (False, True):
        torch.manual_seed(0)
        rt = Runtime(torch.device("cpu"), rank=0, world_size=1, precision="fp32", compile=compiled)
        # The observation loss in 1000-row chunks: 8 x 287 rows make 3, the last one shorter.
        model = JOWA(model_config(arch, params, 32, 36), levers=Levers(obs_loss_chunk=1000))
        trainer = WorldTrainer(model, rt, params, 8)
        trainer.enter(stage_at(2, params))
        trainer.model.eval()  # no dropout, so that both runs compute the same function
        if compiled:
            explained = torch._dynamo.explain(trainer.losses)(pool.draw(8, 0, 1), None)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        for step in range(1, 4):
            trainer.step(step, pool.draw(params.batch, params.seed, step))
        weights.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=1e-4)


def test_a_run_killed_mid_way_resumes_to_the_same_weights(data: dict, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = pretrain_args(data, tmp_path / "killed" / "model.safetensors", steps=150, checkpoint_every=5)
    command = [shutil.which("jowa"), *map(str, args)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "killed" / "run" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "finished before the kill: no test"
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming pretrain tiny from step " in resumed.stderr
    jowa(*pretrain_args(data, tmp_path / "whole" / "model.safetensors", steps=150, checkpoint_every=5))
    killed, _ = load_model(tmp_path / "killed" / "model.safetensors")
    whole, _ = load_model(tmp_path / "whole" / "model.safetensors")
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, killed.state_dict()[name]), name
    steps = [m["step"] for m in metrics(tmp_path / "killed" / "run")]
    assert steps == sorted(set(steps)) and steps[-1] == 150  # logged lines after the resumed step redone once


def test_torchrun_two_ranks_equal_one_process_at_the_same_global_batch(data: dict, tmp_path: Path) -> None:
    """Two gloo ranks with 4 segments each vs one process accumulating two micro-batches of 4: the same
    segments and gradient (dropout off); replicas must agree at every checkpoint or the run fails."""
    quiet_arch = {**ARCH, "dropout": 0.0, "q_dropout": 0.0}
    settings = {"steps": 12, "critic_after": 6, "checkpoint_every": 4}

    def args(out: Path, micro: int | None) -> list[str]:
        full = pretrain_args(data, out, **settings, micro_batch=micro)
        full[full.index("--model") + 1] = json.dumps(quiet_arch)
        return [str(a) for a in full]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
    ]
    command = [*torchrun, shutil.which("jowa"), "-q", *args(tmp_path / "ddp" / "m.safetensors", None)]
    two = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    jowa(*args(tmp_path / "one" / "m.safetensors", 4))
    ddp, _ = load_model(tmp_path / "ddp" / "m.safetensors")
    one, _ = load_model(tmp_path / "one" / "m.safetensors")
    for name, tensor in one.state_dict().items():
        torch.testing.assert_close(ddp.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_fine_tuning_trains_model_and_tokenizer_on_the_held_out_set(data: dict, tmp_path: Path) -> None:
    pretrained = tmp_path / "pretrain" / "model.safetensors"
    jowa(*pretrain_args(data, pretrained, steps=4, critic_after=2))
    out = tmp_path / "ft"
    common = [
        "--model", pretrained, "--tokenizer", data["tokenizer"], "--store", data["stores"][1],
        "--out", out / "model.safetensors", "--out-tokenizer", out / "tokenizer.safetensors",
    ]  # fmt: skip
    jowa("finetune", "--params", json.dumps(FINETUNE), *common, "--run-dir", out / "run")
    model, meta = load_model(out / "model.safetensors")
    before, _ = load_model(pretrained)
    task = meta["task_id"]
    assert meta["game"] == "Boxing" and meta["pretrained"]["size"] == "tiny"
    assert not torch.equal(
        model.task_embedding_action.weight[task], before.task_embedding_action.weight[task]
    )
    tuned, _ = load_tokenizer(out / "tokenizer.safetensors")
    original, _ = load_tokenizer(data["tokenizer"])
    assert not torch.equal(tuned.embedding.weight, original.embedding.weight)
    logged = metrics(out / "run")
    assert (
        logged[-1]["step"] == 6
        and "tokenizer_reconstruction_loss" in logged[-1]
        and "loss_td_error" in logged[0]
    )
    assert "imagined_buffer" not in logged[0] and logged[-1]["imagined_buffer"] > 0  # imagines after step 3

    fixed = {**FINETUNE, "tune_tokenizer": False}
    assert cli.main(["-q", "finetune", "--params", json.dumps(fixed), *map(str, common),
                     "--run-dir", str(out / "run2")]) == 1  # fmt: skip
    jowa(
        "finetune",
        "--params",
        json.dumps(fixed),
        *common,
        "--tokens",
        data["tokens"][1],
        "--run-dir",
        out / "run3",
    )
    kept, _ = load_tokenizer(out / "tokenizer.safetensors")
    assert torch.equal(kept.embedding.weight, original.embedding.weight)


def test_the_reference_pick_by_test_return_is_an_option_labeled_as_such(data: dict, tmp_path: Path) -> None:
    pretrained = tmp_path / "pretrain" / "model.safetensors"
    jowa(*pretrain_args(data, pretrained, steps=4, critic_after=2))
    outputs = {}
    for rule in ("final", "best_test_return"):
        out = tmp_path / rule
        params = {**FINETUNE, "tune_tokenizer": False,
                  "imagination": {**FINETUNE["imagination"], "enabled": False},
                  "selection": {**FINETUNE["selection"], "rule": rule}}  # fmt: skip
        jowa("finetune", "--params", json.dumps(params), "--model", pretrained,
             "--tokenizer", data["tokenizer"], "--store", data["stores"][1], "--tokens", data["tokens"][1],
             "--out", out / "model.safetensors", "--out-tokenizer", out / "tokenizer.safetensors",
             "--run-dir", out / "run")  # fmt: skip
        outputs[rule] = load_model(out / "model.safetensors")
    final, final_meta = outputs["final"]
    picked, meta = outputs["best_test_return"]
    assert final_meta["selection"] == {"rule": "final"}
    chosen = meta["selection"]
    assert chosen["rule"] == "best_test_return (selected on test episodes)" and chosen["step"] in (3, 6)
    logged = [line for line in metrics(tmp_path / "best_test_return" / "run") if "selection_return" in line]
    assert [line["step"] for line in logged] == [3, 6]  # evaluated every 3 steps and at the end
    same = all(torch.equal(picked.state_dict()[k], v) for k, v in final.state_dict().items())
    assert same == (chosen["step"] == 6)  # the last evaluation's weights are the final ones


def test_imagined_segments_enter_the_critic_losses_only(data: dict) -> None:
    params = PretrainParams.model_validate_json(json.dumps({**PRETRAIN, "critic_after": 0}))
    stores = [TrainingStore.open(path) for path in data["stores"]]
    tokens = [np.load(path) for path in data["tokens"]]
    pool = DevicePool(SegmentPool(stores, tokens, length=8, stride=4, device="cpu"), stores, CPU)
    model = JOWA(
        model_config(load_params(ROOT / "config/smoke.yaml").models["tiny-s"], params, 32, 36)
    ).eval()
    trainer = WorldTrainer(model, CPU, params, 8)
    trainer.enter(stage_at(1, params))
    model.eval()
    real, imagined = pool.draw(8, 0, 1), pool.draw(8, 0, 2)
    alone, mixed = trainer.losses(real, None), trainer.losses(real, imagined)
    for name in ("loss_obs", "loss_rewards", "loss_ends"):
        torch.testing.assert_close(alone[name], mixed[name])
    assert not torch.isclose(alone["loss_td_error"], mixed["loss_td_error"])


def test_a_nan_loss_stops_the_run_naming_the_step_and_last_checkpoint(tmp_path: Path) -> None:
    run = TrainingRun(tmp_path, CPU, fingerprint={}, total_steps=20, checkpoint_every=3, log_every=5,
                      description="toy", quiet=True)  # fmt: skip
    values = {7: float("nan")}

    def step(step: int) -> dict[str, torch.Tensor]:
        return {"loss": torch.tensor(values.get(step, 1.0))}

    with pytest.raises(
        TrainingDiverged, match=r"toy: loss became nan or inf at step 7; .*state.pt \(step 6\)"
    ):
        run.loop(0, step, state_fn=dict, info_fn=lambda s: {}, samples_per_step=1, tokens_per_step=1)
    assert torch.load(tmp_path / "state.pt", weights_only=False)["step"] == 6
