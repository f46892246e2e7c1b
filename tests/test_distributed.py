"""Stage 1 under real DDP: a frozen Q head needs no `find_unused_parameters`, and gradients are averaged.

The test writes a training script, runs it with `torchrun` on two CPU processes (gloo) and reads what each
rank reports. Each rank trains on its own random data; at every step it also computes its local gradient
(under `no_sync`) so that the DDP gradient can be checked against the mean of the ranks' local gradients.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORLD_SIZE = 2
STEPS = 3

SCRIPT = textwrap.dedent(
    '''
    """One rank of a stage-1 run: world-model losses only, frozen Q head, plain DDP."""

    import hashlib
    import json
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from jowa.models.batch import Batch
    from jowa.models.losses import world_model_losses
    from jowa.models.world_action import JOWA, JOWAConfig

    ARCH = {"layers": 1, "heads": 2, "width": 32, "q_hidden": 16, "q_ensemble": 1}


    def checksum(tensors):
        digest = hashlib.sha256()
        for tensor in tensors:
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()


    def gradients(parameters):
        # None only in the control run (trainable Q head), which DDP stops at the next step.
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in parameters]


    def random_batch(config, generator):
        size, steps, tokens = 2, config.max_blocks, config.tokens_per_block - 1
        ends = torch.zeros(size, steps, dtype=torch.long)
        ends[0, -1] = 1
        return Batch(
            obs_tokens=torch.randint(config.obs_vocab, (size, steps, tokens), generator=generator),
            actions=torch.randint(config.num_actions, (size, steps), generator=generator),
            rewards=torch.randint(-1, 2, (size, steps), generator=generator).float(),
            ends=ends,
            mask=torch.ones(size, steps, dtype=torch.bool),
            tasks=torch.randint(15, (size,), generator=generator),
        )


    def main(out_dir, freeze_q, steps):
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.set_num_threads(1)
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        # No dropout, so that the local and the synchronised pass of a step compute the same gradient.
        config = JOWAConfig.from_arch(ARCH, dropout=0.0, max_blocks=2)
        model = JOWA(config)
        if freeze_q:
            model.q_head.requires_grad_(False)
        ddp = DistributedDataParallel(model)  # deliberately without find_unused_parameters
        optimizer = model.configure_optimizers(
            world_lr=1e-3, critic_lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8
        )
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        start, q_start = checksum(trainable), checksum(model.q_head.parameters())
        generator = torch.Generator().manual_seed(1000 + rank)

        def step_loss(batch):
            output = ddp(batch.tokens(), batch.tasks)
            return sum(world_model_losses(output, batch, supervised_weight=1.0).values())

        losses, errors, spreads, missing = [], [], [], 0
        for _ in range(steps):
            batch = random_batch(config, generator)
            optimizer.zero_grad(set_to_none=True)
            with ddp.no_sync():
                step_loss(batch).backward()
            local = gradients(trainable)
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(batch)
            loss.backward()
            missing += sum(parameter.grad is None for parameter in trainable)
            mean = [gradient.clone() for gradient in local]
            for gradient in mean:
                dist.all_reduce(gradient)
                gradient /= world
            errors.append(max(
                ((synced - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()
                for synced, expected in zip(gradients(trainable), mean)
            ))
            spreads.append(max((own - expected).abs().max().item() for own, expected in zip(local, mean)))
            optimizer.step()
            losses.append(loss.item())
        report = {
            "rank": rank,
            "groups": [group["name"] for group in optimizer.param_groups],
            "losses": losses,
            "missing_gradients": missing,
            "max_relative_gradient_error": max(errors),
            "min_local_gradient_spread": min(spreads),
            "start": start,
            "trainable": checksum(trainable),
            "q_head_unchanged": checksum(model.q_head.parameters()) == q_start,
            "all_parameters": checksum(model.parameters()),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


    main(sys.argv[1], freeze_q=sys.argv[2] == "freeze", steps=int(sys.argv[3]))
    '''
)


def run_torchrun(tmp_path: Path, q_head: str) -> subprocess.CompletedProcess:
    """Run the script on WORLD_SIZE CPU processes; the interpreter's own torchrun comes first."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    torchrun = shutil.which("torchrun", path=search)
    if torchrun is None:
        pytest.fail("torchrun not found next to the Python interpreter or on PATH; it comes with torch")
    script = tmp_path / "stage1_ddp.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [torchrun, "--standalone", "--nproc-per-node", str(WORLD_SIZE), str(script)]
    return subprocess.run(
        [*command, str(tmp_path), q_head, str(STEPS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_stage1_ddp_with_a_frozen_q_head_averages_gradients(tmp_path: Path) -> None:
    proc = run_torchrun(tmp_path, "freeze")
    assert proc.returncode == 0, proc.stderr[-5000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    for report in reports:
        assert report["groups"] == ["world_decay", "world_no_decay"]  # no critic group
        assert len(report["losses"]) == STEPS and report["missing_gradients"] == 0
        # The DDP gradient is the mean of the ranks' local gradients, which differ (different data).
        assert report["max_relative_gradient_error"] < 1e-5
        assert report["min_local_gradient_spread"] > 1e-6
        assert report["q_head_unchanged"] and report["trainable"] != report["start"]
    first, second = reports
    assert first["losses"] != second["losses"]
    assert first["start"] == second["start"]  # rank 0's initial weights were broadcast
    assert first["trainable"] == second["trainable"] and first["all_parameters"] == second["all_parameters"]


@pytest.mark.slow
def test_a_trainable_q_head_unused_by_the_losses_breaks_plain_ddp(tmp_path: Path) -> None:
    """The control: without freezing, the Q head gets no gradient and DDP stops at the next step."""
    proc = run_torchrun(tmp_path, "train")
    assert proc.returncode != 0
    assert "find_unused_parameters" in proc.stderr


EXPLAIN_SCRIPT = textwrap.dedent(
    '''
    """One rank: how many graphs Dynamo makes of the stage-2 step's forward and losses under DDP."""

    import json
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from jowa.models.batch import Batch
    from jowa.models.world_action import JOWA, JOWAConfig
    from jowa.core.config import load_params
    from jowa.train.runtime import Runtime
    from jowa.train.world_step import Stage, WorldTrainer

    ARCH = {"layers": 1, "heads": 2, "width": 32, "q_hidden": 16, "q_ensemble": 1}

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    config = JOWAConfig.from_arch(ARCH, max_blocks=2)
    rt = Runtime(torch.device("cpu"), rank, dist.get_world_size(), "fp32", compile=True)
    trainer = WorldTrainer(JOWA(config), rt, load_params(sys.argv[2]).pretrain, micro_batch=2)
    trainer.enter(Stage("critic", True, 1e-4, 0.1))
    generator = torch.Generator().manual_seed(rank)
    t, k = config.max_blocks, config.tokens_per_block - 1
    batch = Batch(
        obs_tokens=torch.randint(config.obs_vocab, (2, t, k), generator=generator),
        actions=torch.randint(config.num_actions, (2, t), generator=generator),
        rewards=torch.zeros(2, t), ends=torch.zeros(2, t, dtype=torch.long),
        mask=torch.ones(2, t, dtype=torch.bool), tasks=torch.tensor([0, 1]),
    )
    explained = torch._dynamo.explain(trainer.losses)(batch, None)
    ddp = trainer.losses
    report = {
        "graphs": explained.graph_count, "breaks": explained.graph_break_count,
        "reasons": [str(reason.reason) for reason in explained.break_reasons],
        "broadcast_buffers": ddp.broadcast_buffers, "bucket_view": ddp.gradient_as_bucket_view,
    }
    (Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
    '''
)


@pytest.mark.slow
def test_the_ddp_step_is_one_graph_through_ddp_into_the_losses(tmp_path: Path) -> None:
    """Compiling a function that calls the DDP module broke the graph at DDP's forward (5 graphs, 4
    breaks on gloo); the DDP-wrapped losses module is traced as one graph, without buffer broadcasts."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    torchrun = shutil.which("torchrun", path=search)
    assert torchrun is not None, "torchrun comes with torch"
    script = tmp_path / "explain_ddp.py"
    script.write_text(EXPLAIN_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [torchrun, "--standalone", "--nproc-per-node", str(WORLD_SIZE), str(script)]
    proc = subprocess.run(
        [*command, str(tmp_path), str(ROOT / "config" / "smoke.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    for rank in range(WORLD_SIZE):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (report["graphs"], report["breaks"]) == (1, 0), report["reasons"]
        assert report["broadcast_buffers"] is False and report["bucket_view"] is True
