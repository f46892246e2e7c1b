"""Our checkpoint format: exact round trip, JSON metadata readable by anyone, clean failures."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from jowa.core.errors import JowaError, MissingInputError
from jowa.models.lpips import LPIPS
from jowa.models.tokenizer import Tokenizer
from jowa.models.tokenizer_config import TokenizerConfig
from jowa.models.transformer import flash_attn_func
from jowa.models.world_action import JOWA, JOWAConfig, count_parameters
from jowa.weights import checkpoints
from jowa.weights.checkpoints import load_model, read_model_metadata, save_model
from jowa.weights.state_files import CheckpointError, load_state_file
from jowa.weights.tokenizer_checkpoints import load_tokenizer, save_tokenizer

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
    info = read_model_metadata(path)
    assert info["config"] == json.loads(header["jowa_config"])
    assert info["meta"]["losses"] == {"loss_obs": 7.6}


def test_a_foreign_safetensors_file_is_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=f"{path}: not a JOWA checkpoint"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not a JOWA checkpoint"):
        read_model_metadata(path)


def test_count_parameters_with_our_own_tokenizer() -> None:
    tokenizer = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))  # 20 + 10 parameters
    tokenizer[1].requires_grad_(False)
    counts = count_parameters(JOWA(TINY), tokenizer)
    assert (counts["tokenizer_module"], counts["tokenizer_trainable"]) == (30, 20)
    assert counts["reference_name"] == counts["jowa_module"] + 30
    assert counts["jowa_module"] - counts["jowa_trainable"] == counts["q_head"]


BACKENDS = ["auto", "sdpa"] + (["flash"] if flash_attn_func is not None else [])


@pytest.mark.parametrize("saved_with", BACKENDS)
def test_the_attention_backend_is_chosen_at_load_time(tmp_path: Path, saved_with: str) -> None:
    torch.manual_seed(0)
    model = JOWA(TINY, attention=saved_with)
    path = tmp_path / "model.safetensors"
    save_model(path, model, model.config)
    assert "attention" not in json.dumps(read_model_metadata(path))
    reference = JOWA(TINY, attention="sdpa").eval()  # SDPA runs everywhere, flash-attn only on CUDA
    reference.load_state_dict(model.state_dict())
    tokens, tasks = torch.randint(0, 18, (2, 80)), torch.tensor([3, 37])
    with torch.no_grad():
        expected = reference(tokens, tasks).obs_logits
    for backend in BACKENDS:
        loaded, _ = load_model(path, attention=backend)
        assert loaded.config == TINY and loaded.transformer.attention == backend
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
        if backend != "flash":  # flash-attn needs CUDA half-precision inputs
            with torch.no_grad():
                assert torch.equal(loaded.eval()(tokens, tasks).obs_logits, expected)


def test_a_checkpoint_written_before_qkv_were_fused_loads_to_the_same_model(
    tmp_path: Path, trained_model: JOWA
) -> None:
    """Files of `jowa pretrain` before issue 19 hold attn.query/key/value: they are stacked into attn.qkv."""
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_model(path, trained_model, TINY, {"step": 7})
    header = read_metadata_header(path)
    old = {}
    for name, tensor in trained_model.state_dict().items():
        if ".attn.qkv." in name:
            for part, piece in zip(("query", "key", "value"), tensor.chunk(3), strict=True):
                old[name.replace(".qkv.", f".{part}.")] = piece.contiguous()
        else:
            old[name] = tensor.contiguous()
    assert "transformer.blocks.1.attn.value.bias" in old and not any(".qkv." in name for name in old)
    save_file(old, str(path), metadata=header)
    loaded, meta = load_model(path)
    assert meta == {"step": 7}
    for name, tensor in trained_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def read_metadata_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _rewrite_header(path: Path, **entries: str) -> None:
    """Replace metadata entries of a safetensors file in place (tensors untouched)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        header = {**handle.metadata(), **entries}
    save_file(tensors, str(path), metadata=header)


def test_a_checkpoint_whose_config_does_not_build_is_rejected(tmp_path: Path, trained_model: JOWA) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, trained_model, TINY)
    config = read_model_metadata(path)["config"]
    _rewrite_header(path, jowa_config=json.dumps({**config, "attention_backend": "sdpa"}))
    with pytest.raises(CheckpointError, match=f"{path}: bad JOWA config .*attention_backend"):
        load_model(path)
    _rewrite_header(path, jowa_config="{not json")
    with pytest.raises(CheckpointError, match="jowa_config or jowa_meta absent or not JSON"):
        read_model_metadata(path)


def test_a_checkpoint_whose_tensors_do_not_fit_its_config_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, JOWA(TINY), TINY)
    wider = dataclasses.replace(TINY, q_hidden=24)
    _rewrite_header(path, jowa_config=json.dumps(dataclasses.asdict(wider)))
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    message = str(caught.value)
    assert (
        message.startswith(f"{path}: ")
        and "wrong shapes (18): q_head.in_weight (expected [2, 24, 32]" in message
    )
    assert "missing keys" not in message and "unexpected keys" not in message


def test_tokenizer_round_trip_keeps_its_lpips_net(tmp_path: Path) -> None:
    config = TokenizerConfig(vocab_size=16, embed_dim=8, z_channels=8, ch=8)
    torch.manual_seed(0)
    tokenizer = Tokenizer(config, perceptual=LPIPS())
    path = tmp_path / "tokenizer.safetensors"
    save_tokenizer(path, tokenizer, {"step": 3})
    loaded, meta = load_tokenizer(path)
    assert meta == {"step": 3} and loaded.config == config and loaded.has_perceptual
    for name, tensor in tokenizer.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(CheckpointError, match="not a JOWA checkpoint of format 'jowa-safetensors-v1'"):
        load_model(path)


# ----------------------------------------------------------------------------------------- state files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.arange(6.0).view(2, 3), "layer.bias": torch.zeros(2)}


def test_state_files_of_every_format_load(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    import numpy as np
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "a.safetensors"))
    np.savez(tmp_path / "a.npz", **{name: tensor.numpy() for name, tensor in state.items()})
    torch.save(state, tmp_path / "a.pt")
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "training.ckpt")
    for name in ("a.safetensors", "a.npz", "a.pt", "training.ckpt"):
        loaded = load_state_file(tmp_path / name)
        assert loaded.keys() == state.keys(), name
        assert all(torch.equal(loaded[key], state[key]) for key in state), name


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".npz"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_state_file_names_itself_and_the_expected_format(
    tmp_path: Path, state: dict[str, torch.Tensor], suffix: str, damage: str
) -> None:
    import numpy as np
    from safetensors.torch import save_file

    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(good))
    elif suffix == ".npz":
        np.savez(good, **{name: tensor.numpy() for name, tensor in state.items()})
    else:
        torch.save(state, good)
    raw = good.read_bytes()
    data = {"truncated": raw[: len(raw) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage]
    path = _write(tmp_path / f"bad{suffix}", data)
    expected = {".safetensors": ".safetensors file", ".npz": ".npz archive"}.get(suffix, "torch.save file")
    with pytest.raises(
        CheckpointError, match=rf"^{path}: not a readable {re.escape(expected)} .*expected a"
    ) as caught:
        load_state_file(path)
    assert isinstance(caught.value, JowaError) and "\n" not in str(caught.value)


def test_a_file_without_a_state_dict_is_rejected(tmp_path: Path) -> None:
    import numpy as np

    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({}, tmp_path / "empty.pt")
    torch.save({"weight": torch.zeros(2), "step": "ten"}, tmp_path / "mixed.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, refused by weights_only
    np.savez(tmp_path / "objects.npz", weight=np.array([object()], dtype=object))
    cases = {
        "list.pt": "holds a list, not a state dict",
        "empty.pt": "holds nothing, not a state dict",
        "mixed.pt": "state dict entry 'step' is of type str, not a tensor",
        "module.pt": "not a readable torch.save file",
        "objects.npz": "not a readable .npz archive",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=f"^{tmp_path / name}: {message}"):
            load_state_file(tmp_path / name)


def test_a_missing_file_is_a_missing_input(tmp_path: Path) -> None:
    for call in (load_state_file, read_model_metadata, load_model, load_tokenizer):
        with pytest.raises(MissingInputError, match=str(tmp_path / "absent.pt")):
            call(tmp_path / "absent.pt")


def test_read_metadata_of_a_non_safetensors_file(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, tmp_path / "model.safetensors")  # a torch pickle under the wrong name
    with pytest.raises(
        CheckpointError, match="not a readable .safetensors file .*expected a JOWA checkpoint"
    ):
        read_model_metadata(tmp_path / "model.safetensors")
