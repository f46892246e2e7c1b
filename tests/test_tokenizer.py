"""VQ-VAE tokenizer: reference fixture reproduced, checkpoint layout, shapes, gradients, LPIPS hook."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.models.lpips import LPIPS
from jowa.models.tokenizer import PerceptualWeightsUnavailable, Tokenizer
from jowa.models.tokenizer_config import TokenizerConfig
from jowa.weights.state_files import CheckpointError
from jowa.weights.tokenizer_checkpoints import load_lpips, tokenizer_from_reference

REFERENCE = Path(__file__).resolve().parent / "reference"
FIXTURE = REFERENCE / "tiny_fixture"
SHAPES_JSON = REFERENCE / "jowa_state_dict_shapes.json"

TINY = TokenizerConfig(
    vocab_size=64,
    embed_dim=16,
    z_channels=16,
    ch=8,
    ch_mult=(1, 1, 1),
    num_res_blocks=2,
    attn_resolutions=(6, 12),
)


@pytest.fixture(scope="module")
def fixture_meta() -> dict:
    return json.loads((FIXTURE / "tiny_fixture.json").read_text())


@pytest.fixture(scope="module")
def fixture_state() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "tiny_tokenizer_state.npz") as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture(scope="module")
def fixture_io() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "tiny_io.npz") as archive:
        return {k: archive[k] for k in ("frames", "frame_tokens", "reconstructions")}


@pytest.fixture(scope="module")
def reference_tokenizer(fixture_meta: dict, fixture_state: dict) -> Tokenizer:
    torch.manual_seed(0)
    return tokenizer_from_reference(fixture_state, fixture_meta["tokenizer"]).eval()


@pytest.fixture(scope="module")
def full_model() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer()


@pytest.fixture(scope="module")
def lpips_net() -> LPIPS:
    torch.manual_seed(0)
    net = LPIPS()
    net.lin0.model[1].weight.data.abs_()  # a positive head, so that any feature change counts
    return net


@pytest.fixture(scope="module")
def full_shapes() -> dict[str, list[int]]:
    return json.loads(SHAPES_JSON.read_text())["tokenizer"]


# ----------------------------------------------------------------------------------------------- config


def test_config_defaults_are_the_released_ones() -> None:
    c = TokenizerConfig()
    assert (c.vocab_size, c.embed_dim, c.resolution, c.in_channels, c.z_channels, c.ch) == (
        2048,
        512,
        84,
        1,
        512,
        64,
    )
    assert (c.ch_mult, c.num_res_blocks, c.attn_resolutions, c.out_ch, c.dropout) == (
        (1, 1, 1),
        2,
        (6, 12),
        1,
        0.0,
    )
    assert (c.latent_resolution, c.tokens_per_frame) == (6, 36)


def test_config_from_reference_layout(fixture_meta: dict) -> None:
    cfg = TokenizerConfig.from_dict(fixture_meta["tokenizer"])
    assert cfg == TINY
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    flat = {"vocab_size": 64, "embed_dim": 16, **fixture_meta["tokenizer"]["encoder_decoder"]}
    assert TokenizerConfig.from_dict({"_target_": "x", **flat}) == cfg


def test_config_rejects_unknown_keys_and_bad_resolution() -> None:
    with pytest.raises(ValueError, match="vocab_sise"):
        TokenizerConfig.from_dict({"vocab_sise": 10})
    with pytest.raises(ValueError, match="divisible"):
        TokenizerConfig(resolution=80)


# ----------------------------------------------------------------------------------------------- fixture


def test_fixture_state_loads_strictly_by_name(fixture_state: dict) -> None:
    model = Tokenizer(TINY)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state.items()})
    assert missing == [] and unexpected == []


def test_fixture_tokens_reproduced_exactly(reference_tokenizer: Tokenizer, fixture_io: dict) -> None:
    tokens = reference_tokenizer.encode(torch.from_numpy(fixture_io["frames"]))
    assert tokens.dtype == torch.long and tokens.shape == (3, 36)
    assert torch.equal(tokens, torch.from_numpy(fixture_io["frame_tokens"]))


def test_fixture_reconstructions_reproduced(reference_tokenizer: Tokenizer, fixture_io: dict) -> None:
    expected = torch.from_numpy(fixture_io["reconstructions"])  # (y + 1) / 2, not clamped
    frames = torch.from_numpy(fixture_io["frames"])
    via_frames = reference_tokenizer.encode_decode(frames, clamp=False)
    with torch.no_grad():
        via_tokens = reference_tokenizer.decode(torch.from_numpy(fixture_io["frame_tokens"]), clamp=False)
    torch.testing.assert_close(via_frames, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(via_tokens, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        clamped = reference_tokenizer.decode(torch.from_numpy(fixture_io["frame_tokens"]))
    assert clamped.min() >= 0 and clamped.max() <= 1
    torch.testing.assert_close(clamped, expected.clamp(0, 1), rtol=1e-4, atol=1e-5)


def test_fixture_losses_reproduced(
    reference_tokenizer: Tokenizer, fixture_io: dict, fixture_meta: dict
) -> None:
    expected = fixture_meta["tokenizer_losses_without_perceptual"]
    with torch.no_grad():
        losses = reference_tokenizer.compute_loss(torch.from_numpy(fixture_io["frames"]))
    assert set(losses) == {"commitment_loss", "reconstruction_loss"}  # no LPIPS weights: perceptual term off
    for name in ("commitment_loss", "reconstruction_loss"):
        assert losses[name].item() == pytest.approx(expected[name], rel=1e-5), name


# ----------------------------------------------------------------------------------------------- full size


def test_full_size_parameter_counts(full_model: Tokenizer) -> None:
    model = full_model

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    assert count(model.encoder) == 1_272_064
    assert count(model.decoder) == 1_201_537
    assert count(model.pre_quant_conv) == count(model.post_quant_conv) == 262_656
    assert count(model.embedding) == 1_048_576
    assert count(model) == 4_047_489


def test_full_size_layout_is_the_reference_one(full_model: Tokenizer, full_shapes: dict) -> None:
    assert {k: list(v.shape) for k, v in full_model.state_dict().items()} == full_shapes
    state = {k: np.zeros(shape, dtype=np.float32) for k, shape in full_shapes.items()}
    state["embedding.weight"] = np.random.default_rng(0).standard_normal(full_shapes["embedding.weight"])
    loaded = tokenizer_from_reference(state, TokenizerConfig().to_dict())
    torch.testing.assert_close(loaded.embedding.weight, torch.from_numpy(state["embedding.weight"]).float())
    assert loaded.encoder.conv_in.weight.abs().sum() == 0 and loaded.lpips is None


def test_reference_loader_names_offending_keys(full_shapes: dict) -> None:
    good = {k: torch.zeros(shape) for k, shape in full_shapes.items()}
    wrong_shape = dict(good, **{"encoder.down.1.attn.0.q.weight": torch.zeros(64, 64, 3, 3)})
    with pytest.raises(CheckpointError, match=r"wrong shapes \(1\): encoder\.down\.1\.attn\.0\.q\.weight"):
        tokenizer_from_reference(wrong_shape, TokenizerConfig())
    missing = {k: v for k, v in good.items() if k != "decoder.up.1.upsample.conv.weight"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder\.up\.1\.upsample\.conv\.weight"):
        tokenizer_from_reference(missing, TokenizerConfig())
    extra = dict(good, **{"decoder.up.0.attn.0.q.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): decoder\.up\.0\.attn\.0\.q\.weight"):
        tokenizer_from_reference(extra, TokenizerConfig())
    partial_lpips = dict(good, **{"lpips.lin0.model.1.weight": torch.zeros(1, 64, 1, 1)})
    with pytest.raises(CheckpointError, match=r"LPIPS .*missing keys .*lpips\.net\.slice1\.0\.weight"):
        tokenizer_from_reference(partial_lpips, TokenizerConfig())


def test_reference_loader_reports_every_problem_in_one_message(full_shapes: dict) -> None:
    """Tokenizer and LPIPS keys, missing, unexpected and wrong-shaped, all in a single error."""
    state = {k: torch.zeros(shape) for k, shape in full_shapes.items() if k != "embedding.weight"}
    state["decoder.conv_out.bias"] = torch.zeros(2)
    state["encoder.extra.weight"] = torch.zeros(1)
    state["lpips.lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    with pytest.raises(CheckpointError) as caught:
        tokenizer_from_reference(state, TokenizerConfig())
    message = str(caught.value)
    assert message.count("reference tokenizer") == 1 and "LPIPS" in message
    assert re.search(r"missing keys \(\d+\): embedding\.weight, .*lpips\.net\.slice1\.0\.weight", message)
    assert "lpips.scaling_layer" not in message  # fixed constants, optional
    assert "unexpected keys (1): encoder.extra.weight" in message
    assert "decoder.conv_out.bias (expected [1], got [2])" in message
    assert "lpips.lin0.model.1.weight (expected [1, 64, 1, 1], got [1, 32, 1, 1])" in message


# ----------------------------------------------------------------------------------------------- architecture


def test_attention_only_where_the_reference_has_it() -> None:
    names = Tokenizer(TINY).state_dict().keys()
    encoder_attn_levels = {n.split(".")[2] for n in names if n.startswith("encoder.down.") and ".attn." in n}
    assert encoder_attn_levels == {"1", "2"}  # at 12 and 6, not at 84
    assert not [n for n in names if n.startswith("decoder.up.") and ".attn." in n]  # off-by-resolution quirk
    assert "decoder.mid.attn_1.q.weight" in names


def test_encode_decode_shapes_with_leading_dims() -> None:
    torch.manual_seed(0)
    model = Tokenizer(TINY).eval()
    frames = torch.rand(2, 3, 1, 84, 84)
    tokens = model.encode(frames)
    assert tokens.shape == (2, 3, 36) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < TINY.vocab_size
    with torch.no_grad():
        decoded = model.decode(tokens)
    assert decoded.shape == (2, 3, 1, 84, 84) and decoded.min() >= 0 and decoded.max() <= 1
    assert model.encode_decode(frames).shape == frames.shape
    enc = model.encode_latents(model.preprocess(frames))
    assert enc.z.shape == enc.z_quantized.shape == (2, 3, 16, 6, 6)
    torch.testing.assert_close(model.embed_tokens(tokens), enc.z_quantized)


def test_straight_through_estimator_reaches_encoder_and_codebook() -> None:
    torch.manual_seed(0)
    model = Tokenizer(TINY)
    frames = torch.rand(2, 1, 84, 84)
    model.compute_loss(frames)["reconstruction_loss"].backward()
    assert model.encoder.conv_in.weight.grad is not None and model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.embedding.weight.grad is None or model.embedding.weight.grad.abs().sum() == 0  # only via z_q
    model.zero_grad()
    model.compute_loss(frames)["commitment_loss"].backward()
    assert model.embedding.weight.grad.abs().sum() > 0  # codebook term
    assert model.encoder.conv_out.weight.grad.abs().sum() > 0  # commitment term
    assert model.decoder.conv_out.weight.grad is None or model.decoder.conv_out.weight.grad.abs().sum() == 0


def test_initialisation_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = Tokenizer(TINY)
    bound = 1.0 / TINY.vocab_size
    assert model.embedding.weight.abs().max() <= bound
    conv = model.encoder.down[0].block[0].conv1
    assert conv.bias.abs().sum() == 0
    w = conv.weight.reshape(conv.weight.shape[0], -1)
    torch.testing.assert_close(w @ w.t(), 2.0 * torch.eye(w.shape[0]), rtol=1e-4, atol=1e-4)  # gain^2 = 2


# ----------------------------------------------------------------------------------------------- perceptual


def test_perceptual_loss_without_weights_fails_clearly() -> None:
    model = Tokenizer(TINY)
    with pytest.raises(
        PerceptualWeightsUnavailable, match="needs pretrained weights.*perceptual_source\\('lpips'\\)"
    ):
        model.compute_loss(torch.rand(1, 1, 84, 84), perceptual=True)


def test_lpips_random_weights_shape_and_identity(lpips_net: LPIPS) -> None:
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # 32x32 keeps the 5 VGG stages (down to 2x2) and the test fast
    with torch.no_grad():
        same = lpips_net(x, x.clone())
        different = lpips_net(x, torch.rand(2, 1, 32, 32) * 2 - 1)
        rgb = lpips_net(x.repeat(1, 3, 1, 1), x.flip(-1).repeat(1, 3, 1, 1))
    assert same.shape == different.shape == (2, 1, 1, 1)
    torch.testing.assert_close(same, torch.zeros_like(same))
    assert (different > 0).all()
    torch.testing.assert_close(rgb, lpips_net(x, x.flip(-1)))  # grayscale = channel-repeated RGB
    assert sum(p.numel() for p in lpips_net.parameters()) == 14_714_688 + 1_472
    assert not any(p.requires_grad for p in lpips_net.parameters())


def test_lpips_weights_from_file_and_from_reference_checkpoint(tmp_path: Path, lpips_net: LPIPS) -> None:
    source = lpips_net
    path = tmp_path / "lpips.pt"
    torch.save({f"lpips.{k}": v for k, v in source.state_dict().items()}, path)
    model = Tokenizer(TINY, perceptual=load_lpips(path))
    model.train()
    assert model.lpips is not None and model.lpips.training  # its dropout is on while training (gotcha 24)
    assert not any(p.requires_grad for p in model.lpips.parameters())
    model.eval()  # deterministic for the comparison below
    frames = torch.rand(1, 1, 84, 84)
    losses = model.compute_loss(frames)
    x = model.preprocess(frames)
    with torch.no_grad():
        expected = source(x, model(x).reconstruction).mean()
    torch.testing.assert_close(losses["perceptual_loss"].detach(), expected)

    # torchvision-style VGG16 keys in one file plus the LPIPS heads in another, merged.
    vgg = {
        f"features.{k.split('.')[2]}.{k.split('.')[3]}": v
        for k, v in source.state_dict().items()
        if "net." in k
    }
    heads = {k: v for k, v in source.state_dict().items() if k.startswith("lin")}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "heads.pth")
    merged = load_lpips([tmp_path / "vgg16.pth", tmp_path / "heads.pth"])
    for name, value in source.state_dict().items():
        assert torch.equal(merged.state_dict()[name], value), name
    heads_missing = r"LPIPS weights from .*vgg16\.pth: .*missing keys \(5\): lin0\.model\.1\.weight, "
    with pytest.raises(CheckpointError, match=heads_missing):
        load_lpips(tmp_path / "vgg16.pth")

    # A reference checkpoint carrying lpips.* keys enables the perceptual term after loading.
    state = {**model.state_dict()}
    assert any(k.startswith("lpips.") for k in state)
    loaded = tokenizer_from_reference(state, TINY)
    assert loaded.has_perceptual
    assert torch.equal(loaded.lpips.lin4.model[1].weight, source.lin4.model[1].weight)
    assert torch.equal(getattr(loaded.lpips.net.slice5, "28").weight, getattr(source.net.slice5, "28").weight)
