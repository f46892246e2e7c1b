"""`tokenizer.perceptual_weights: lpips`: the lpips package's heads and torchvision's VGG16 assembled into
the LPIPS net reference tokenizer checkpoints carry. Nothing is downloaded: the VGG16 "download" reads a
locally written state dict (random weights, torchvision's layout) through a file:// URL into a temporary
torch hub cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jowa.core.config import load_params
from jowa.models.lpips import VGG16_SLICE_ENDS
from jowa.models.tokenizer import Tokenizer
from jowa.train.train_tokenizer import tokenizer_config
from jowa.weights import perceptual_weights
from jowa.weights.perceptual_weights import PerceptualWeightsError, lpips_heads_file, perceptual_source
from jowa.weights.state_files import shapes
from jowa.weights.tokenizer_checkpoints import load_lpips

ROOT = Path(__file__).resolve().parent.parent
# torchvision's vgg16().features: conv layers at these indices, then classifier 0, 3, 6
VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
               26: (512, 512), 28: (512, 512)}  # fmt: skip


def torchvision_vgg16_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for index, (out, inp) in VGG16_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(out, inp, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(out, generator=generator)
    for index, (out, inp) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():
        state[f"classifier.{index}.weight"] = torch.zeros(out, inp)  # dropped by the assembly
        state[f"classifier.{index}.bias"] = torch.zeros(out)
    return state


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and the VGG16 URL pointing at a local file of random weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tmp_path / "served" / "vgg16_random.pth"
    source.parent.mkdir()
    torch.save(torchvision_vgg16_state(), source)
    monkeypatch.setattr(perceptual_weights, "VGG16_URL", source.as_uri())
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_the_lpips_source_assembles_the_reference_layout(hub: Path) -> None:
    files = perceptual_source("lpips")
    assert files == [hub / "vgg16_random.pth", lpips_heads_file()] and files[0].is_file()  # cached once
    lpips = load_lpips(files)
    heads = torch.load(lpips_heads_file(), map_location="cpu", weights_only=True)
    for k in range(5):
        assert torch.equal(getattr(lpips, f"lin{k}").model[1].weight, heads[f"lin{k}.model.1.weight"])
    vgg = torchvision_vgg16_state()
    assert torch.equal(lpips.net.slice3.state_dict()["14.weight"], vgg["features.14.weight"])
    assert torch.equal(lpips.net.slice5.state_dict()["28.bias"], vgg["features.28.bias"])
    # In a tokenizer, the rest matches the reference tokenizer's shapes and the net sits under `lpips.` in
    # the reference checkpoints' names (torchvision's layer index within its slice, the heads' model.1).
    config = tokenizer_config(load_params(ROOT / "params.yaml").tokenizer)
    state = {k: list(v) for k, v in shapes(Tokenizer(config, perceptual=lpips)).items()}
    reference = json.loads((ROOT / "tests" / "reference" / "jowa_state_dict_shapes.json").read_text())
    assert {k: v for k, v in state.items() if not k.startswith("lpips.")} == reference["tokenizer"]
    slices = {i: next(k for k, end in enumerate(VGG16_SLICE_ENDS, 1) if i < end) for i in VGG16_CONVS}
    expected = {f"lpips.net.slice{slices[i]}.{i}.{kind}" for i in VGG16_CONVS for kind in ("weight", "bias")}
    expected |= {f"lpips.lin{k}.model.1.weight" for k in range(5)}
    expected |= {"lpips.scaling_layer.shift", "lpips.scaling_layer.scale"}
    assert {k for k in state if k.startswith("lpips.")} == expected
    reloaded = load_lpips(
        {f"lpips.{k}": v for k, v in lpips.state_dict().items()}
    )  # as a checkpoint holds it
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in lpips.state_dict().items())


def test_offline_one_line_names_the_file_to_provide(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perceptual_weights, "VGG16_URL", (hub.parent / "missing" / "vgg16.pth").as_uri())
    with pytest.raises(PerceptualWeightsError) as error:
        perceptual_source("lpips")
    message = str(error.value)
    assert "\n" not in message and f"put the file at {hub / 'vgg16.pth'}" in message


def test_a_state_file_path_stays_accepted(tmp_path: Path) -> None:
    assert perceptual_source(str(tmp_path / "lpips.safetensors")) == str(tmp_path / "lpips.safetensors")
