"""Our checkpoint format: exact round trip, JSON metadata readable by anyone, clean failures."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from jowa import checkpoints
from jowa.checkpoints import count_parameters, load_model, read_metadata, save_model
from jowa.models.world_action import JOWA, JOWAConfig

TINY = JOWAConfig.from_arch({"layers": 2, "heads": 2, "width": 32, "q_hidden": 16, "q_ensemble": 2})


@pytest.fixture
def trained_model() -> JOWA:
    """A tiny model whose target head differs from its online head, as in the middle of training."""
    torch.manual_seed(0)
    model = JOWA(TINY)
    with torch.no_grad():
        for parameter in model.q_head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_round_trip_gives_identical_outputs(tmp_path: Path, trained_model: JOWA) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, trained_model, TINY, {"step": 1234, "stage": "critic"})
    loaded, meta = load_model(path)
    assert meta == {"step": 1234, "stage": "critic"}
    assert loaded.config == TINY
    assert loaded.training and not loaded.q_target_head.training
    assert [name for name, p in loaded.named_parameters() if not p.requires_grad] == [
        name for name, p in trained_model.named_parameters() if not p.requires_grad
    ]
    tokens, tasks = torch.randint(0, 18, (2, 150)), torch.tensor([3, 37])
    trained_model.eval()
    loaded.eval()
    with torch.no_grad():
        expected, actual = trained_model(tokens, tasks), loaded(tokens, tasks)
    for name in ("obs_logits", "reward_logits", "end_logits", "q_logits", "q_target_logits"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    assert not torch.equal(actual.q_logits, actual.q_target_logits)
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_metadata_is_plain_json_in_the_header(tmp_path: Path, trained_model: JOWA) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, trained_model, TINY, {"git": "abc123", "losses": {"loss_obs": 7.6}})
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])["__metadata__"]
    assert header["format"] == checkpoints.FORMAT
    assert json.loads(header["jowa_config"])["q_hidden"] == 16
    assert json.loads(header["jowa_meta"]) == {"git": "abc123", "losses": {"loss_obs": 7.6}}
    info = read_metadata(path)
    assert info["config"] == json.loads(header["jowa_config"])
    assert info["meta"]["losses"] == {"loss_obs": 7.6}


def test_a_foreign_safetensors_file_is_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a JOWA checkpoint"):
        load_model(path)


def test_count_parameters_with_our_own_tokenizer() -> None:
    tokenizer = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))  # 20 + 10 parameters
    tokenizer[1].requires_grad_(False)
    counts = count_parameters(JOWA(TINY), tokenizer)
    assert (counts["tokenizer_module"], counts["tokenizer_trainable"]) == (30, 20)
    assert counts["reference_name"] == counts["jowa_module"] + 30
    assert counts["jowa_module"] - counts["jowa_trainable"] == counts["q_head"]


def test_tokenizer_import_is_reexported() -> None:
    from jowa.models import tokenizer

    assert checkpoints.tokenizer_from_reference is tokenizer.tokenizer_from_reference
