"""load_backbone / save_backbone against every supported key layout, with timm as the reference.

Each test writes a small random checkpoint in an official layout (DINOv2, UltraDINO training,
iBOT, USFM, timm), loads it through ``load_backbone`` and compares the forward pass with the
same weights loaded into timm's own model by timm's own ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file
from timm.models.beit import Beit, gen_relative_position_index
from timm.models.beit import checkpoint_filter_fn as beit_filter
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter

from ultradino_monai.networks.checkpoints import (
    FUS_MEAN,
    FUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    load_backbone,
    save_backbone,
    sidecar_path,
)
from ultradino_monai.networks.vit import BeitBackbone, DinoVisionTransformer, build_vit

D = 128  # two 64-wide heads: num_heads is inferred as D / 64, as for ViT-S/B
HEADS = 2


# ----------------------------------------------------------------------------- builders
def _randn(*shape, scale=1.0):
    return torch.randn(*shape) * scale


def block_tensors(depth: int, layer_scale: bool = True, beit: bool = False) -> dict[str, torch.Tensor]:
    """Random transformer blocks in DINOv2/timm key names (BEiT/USFM names with ``beit``)."""
    state = {}
    for i in range(depth):
        b = f"blocks.{i}."
        state[b + "norm1.weight"] = 1 + _randn(D, scale=0.1)
        state[b + "norm1.bias"] = _randn(D, scale=0.1)
        state[b + "attn.qkv.weight"] = _randn(3 * D, D, scale=D**-0.5)
        if beit:
            state[b + "attn.q_bias"] = _randn(D, scale=0.1)
            state[b + "attn.v_bias"] = _randn(D, scale=0.1)
        else:
            state[b + "attn.qkv.bias"] = _randn(3 * D, scale=0.1)
        state[b + "attn.proj.weight"] = _randn(D, D, scale=D**-0.5)
        state[b + "attn.proj.bias"] = _randn(D, scale=0.1)
        state[b + "norm2.weight"] = 1 + _randn(D, scale=0.1)
        state[b + "norm2.bias"] = _randn(D, scale=0.1)
        state[b + "mlp.fc1.weight"] = _randn(4 * D, D, scale=D**-0.5)
        state[b + "mlp.fc1.bias"] = _randn(4 * D, scale=0.1)
        state[b + "mlp.fc2.weight"] = _randn(D, 4 * D, scale=(4 * D) ** -0.5)
        state[b + "mlp.fc2.bias"] = _randn(D, scale=0.1)
        if layer_scale:
            names = ("gamma_1", "gamma_2") if beit else ("ls1.gamma", "ls2.gamma")
            for name in names:
                state[b + name] = 0.5 + _randn(D, scale=0.1)
    state["norm.weight"] = 1 + _randn(D, scale=0.1)
    state["norm.bias"] = _randn(D, scale=0.1)
    return state


def embed_tensors(in_chans: int, patch: int, positions: int | None) -> dict[str, torch.Tensor]:
    state = {
        "cls_token": _randn(1, 1, D),
        "patch_embed.proj.weight": _randn(D, in_chans, patch, patch, scale=(in_chans * patch * patch) ** -0.5),
        "patch_embed.proj.bias": _randn(D, scale=0.1),
    }
    if positions is not None:
        state["pos_embed"] = _randn(1, positions, D, scale=0.5)
    return state


def dinov2_state(grid: int, registers: int = 4, in_chans: int = 3, patch: int = 14, depth: int = 2) -> dict:
    """Official ``dinov2_vit*14[_reg4]_pretrain.pth`` layout: pos_embed with a class slot, mask_token."""
    state = embed_tensors(in_chans, patch, 1 + grid * grid)
    state["mask_token"] = _randn(1, D)
    if registers:
        state["register_tokens"] = _randn(1, registers, D)
    state.update(block_tensors(depth))
    return state


def timm_dinov2_reference(
    state: dict,
    img_size: int,
    registers: int = 4,
    in_chans: int = 3,
    patch: int = 14,
    depth: int = 2,
    dynamic: bool = False,
) -> VisionTransformer:
    """timm's ``vit_small_patch14[_reg4]_dinov2`` configuration, at test size, loaded by timm's filter."""
    kwargs = dict(reg_tokens=registers, no_embed_class=True) if registers else {}
    reference = VisionTransformer(
        img_size=img_size,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=0,
        embed_dim=D,
        depth=depth,
        num_heads=HEADS,
        init_values=1e-5,
        dynamic_img_size=dynamic,
        **kwargs,
    ).eval()
    reference.load_state_dict(vit_filter(dict(state), reference), strict=True)
    return reference


def usfm_state(grid: int, depth: int = 2, in_chans: int = 3, patch: int = 16) -> dict:
    """USFM_latest.pth layout (BEiT/SimMIM): shared relative position bias, q/v biases, gamma_1/2."""
    state = embed_tensors(in_chans, patch, None)
    state["rel_pos_bias.relative_position_bias_table"] = _randn((2 * grid - 1) ** 2 + 3, HEADS, scale=0.5)
    state["rel_pos_bias.relative_position_index"] = gen_relative_position_index((grid, grid))
    state.update(block_tensors(depth, beit=True))
    return state


def save(obj, path):
    torch.save(obj, path)
    return path


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(a, b, atol=atol, rtol=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- DINOv2
def test_dinov2_reg4_official_layout(tmp_path):
    state = dinov2_state(grid=5, registers=4)
    path = save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_backbone(path, in_chans=3, img_size=70)
    assert loaded.source == "dinov2"
    assert (loaded.mean, loaded.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert loaded.info["dropped"] == {} and loaded.info["initialised"] == {}
    model = loaded.model
    assert isinstance(model, DinoVisionTransformer)
    assert (model.patch_size, model.num_register_tokens, model.n_blocks, model.num_heads) == (14, 4, 2, HEADS)
    # every file tensor is in the model: mask token and registers as they are, CLS with pos_embed[:, 0] folded in
    assert torch.equal(model.mask_token, state["mask_token"])
    assert torch.equal(model.reg_token, state["register_tokens"])
    assert torch.equal(model.cls_token, state["cls_token"] + state["pos_embed"][:, :1])
    assert torch.equal(model.pos_embed, state["pos_embed"][:, 1:])

    reference = timm_dinov2_reference(state, img_size=70, dynamic=True)
    for size in (70, 42, 98):  # native 5x5 grid and two dynamic grids (offset-0 antialiased, as timm)
        x = torch.randn(2, 3, size, size)
        assert close(model(x), reference(x))
    assert (loaded.info["interpolate_offset"], loaded.info["interpolate_antialias"]) == (0.0, True)


def test_dinov2_pos_embed_resampled_to_target_grid(tmp_path):
    state = dinov2_state(grid=5, registers=4)
    path = save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_backbone(path, in_chans=3, img_size=56)
    assert loaded.info["pos_embed_resampled"] and loaded.info["file_grid"] == [5, 5] and loaded.info["grid"] == [4, 4]
    assert loaded.model.pos_embed.shape == (1, 16, D)
    reference = timm_dinov2_reference(state, img_size=56)  # timm's filter resamples 5x5 -> 4x4 too
    x = torch.randn(2, 3, 56, 56)
    assert close(loaded.model(x), reference(x))


def test_dinov2_without_registers_and_chunked_blocks(tmp_path):
    state = dinov2_state(grid=3, registers=0, depth=4)
    # block_chunks=2: blocks.{chunk}.{global index}.* (DINOv2 pads chunks with Identity to keep indices)
    chunked = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // 2}.{key[len('blocks.') :]}"
        chunked[key] = value
    assert "blocks.1.3.mlp.fc2.bias" in chunked
    path = save(chunked, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = load_backbone(path, in_chans=3, img_size=42, num_register_tokens=None)
    assert loaded.source == "dinov2" and loaded.model.num_register_tokens == 0 and loaded.model.n_blocks == 4
    reference = timm_dinov2_reference(state, img_size=42, registers=0, depth=4)
    x = torch.randn(2, 3, 42, 42)
    assert close(loaded.model(x), reference(x))
    # non-register DINOv2 models interpolate like DINOv2's hub code: offset 0.1, no antialias
    assert (loaded.model.interpolate_offset, loaded.model.interpolate_antialias) == (0.1, False)


def test_channel_adaptation_3_to_1_is_exact_on_grey_images(tmp_path):
    state = dinov2_state(grid=4, registers=4)
    path = save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_backbone(path, in_chans=1, img_size=56)
    assert loaded.in_chans == 1 and loaded.model.patch_embed.proj.weight.shape == (D, 1, 14, 14)
    assert loaded.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and loaded.std == pytest.approx(
        (sum(IMAGENET_STD) / 3,)
    )
    reference = timm_dinov2_reference(state, img_size=56)
    grey = torch.rand(2, 1, 56, 56)
    rgb_normalised = (grey.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    grey_normalised = (grey - loaded.mean[0]) / loaded.std[0]
    assert close(loaded.model(grey_normalised), reference(rgb_normalised))


def test_channel_adaptation_is_a_plain_sum_when_channels_share_normalisation(tmp_path):
    state = dinov2_state(grid=4, registers=4)
    path = save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_backbone(path, in_chans=1, img_size=56, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert (loaded.mean, loaded.std) == ((0.5,), (0.25,))
    weight = loaded.model.patch_embed.proj.weight
    assert close(weight, state["patch_embed.proj.weight"].sum(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(loaded.model.patch_embed.proj.bias, state["patch_embed.proj.bias"])


# ----------------------------------------------------------------------------- UltraDINO
def ultradino_reference(teacher: dict, img_size: int = 32) -> VisionTransformer:
    """timm ViT (in_chans=1, reg_tokens=4, no_embed_class, init_values) via checkpoint_filter_fn (docs/recipe.md §3)."""
    reference = VisionTransformer(
        img_size=img_size,
        patch_size=16,
        in_chans=1,
        num_classes=0,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        init_values=1e-5,
        reg_tokens=4,
        no_embed_class=True,
    ).eval()
    reference.load_state_dict(vit_filter(dict(teacher), reference), strict=True)
    return reference


def test_ultradino_training_checkpoint_loads_the_teacher(tmp_path):
    teacher = dinov2_state(grid=2, registers=4, in_chans=1, patch=16)
    student = dinov2_state(grid=2, registers=4, in_chans=1, patch=16)
    model_state = {f"teacher.backbone.{k}": v for k, v in teacher.items()}
    model_state.update({f"student.backbone.{k}": v for k, v in student.items()})
    heads = {
        "teacher.dino_head.mlp.0.weight": torch.randn(8, D),
        "student.dino_head.mlp.0.weight": torch.randn(8, D),
        "teacher.dino_head.last_layer.weight_g": torch.ones(16, 1),
        "dino_loss.center": torch.zeros(1, 16),
        "ibot_patch_loss.center": torch.zeros(1, 16),
    }
    model_state.update(heads)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))]).state_dict()
    path = save({"model": model_state, "optimizer": optimizer, "iteration": 1250}, tmp_path / "model_final.rank_0.pth")

    loaded = load_backbone(path, img_size=32)
    assert loaded.source == "ultradino"
    assert (loaded.mean, loaded.std) == (FUS_MEAN, FUS_STD) and loaded.in_chans == 1
    assert loaded.info["container"] == ["model"] and loaded.info["prefix"] == "teacher.backbone."
    assert sorted(loaded.info["ignored"]) == ["iteration", "optimizer"]
    expected_dropped = sorted([f"student.backbone.{k}" for k in student] + list(heads))
    assert sorted(loaded.info["dropped"]["training-state"]) == expected_dropped
    x = torch.randn(2, 1, 32, 32)
    assert close(loaded.model(x), ultradino_reference(teacher)(x))
    assert not close(loaded.model(x), ultradino_reference(student)(x), atol=1e-3)


def test_ultradino_eval_teacher_checkpoint(tmp_path):
    teacher = dinov2_state(grid=2, registers=4, in_chans=1, patch=16)
    document = {
        "teacher": {
            **{f"backbone.{k}": v for k, v in teacher.items()},
            "dino_head.mlp.0.weight": torch.randn(8, D),
            "ibot_head.mlp.0.weight": torch.randn(8, D),
        }
    }
    path = save(document, tmp_path / "teacher_checkpoint.pth")
    loaded = load_backbone(path, img_size=32)
    assert loaded.source == "ultradino" and loaded.info["container"] == ["teacher"]
    assert sorted(loaded.info["dropped"]["ssl-head"]) == ["dino_head.mlp.0.weight", "ibot_head.mlp.0.weight"]
    x = torch.randn(2, 1, 32, 32)
    assert close(loaded.model(x), ultradino_reference(teacher)(x))


# ----------------------------------------------------------------------------- iBOT
def ibot_backbone(grid: int = 2) -> dict:
    state = embed_tensors(3, 16, 1 + grid * grid)
    state.update(block_tensors(2, layer_scale=False))
    return state


def ibot_reference(backbone: dict, img_size: int = 32) -> VisionTransformer:
    """iBOT ViT-S/B/16 maps 1:1 onto timm's vit_*_patch16_224 without LayerScale (docs/recipe.md §3)."""
    reference = VisionTransformer(
        img_size=img_size,
        patch_size=16,
        in_chans=3,
        num_classes=0,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
    ).eval()
    reference.load_state_dict(vit_filter(dict(backbone), reference), strict=True)
    return reference


def test_ibot_backbone_file_under_state_dict(tmp_path):
    backbone = ibot_backbone()
    masked_embed = torch.randn(1, D)
    path = save({"state_dict": {**backbone, "masked_embed": masked_embed}}, tmp_path / "checkpoint_teacher.pth")
    loaded = load_backbone(path, in_chans=3, img_size=32)
    assert loaded.source == "ibot" and (loaded.mean, loaded.std) == (IMAGENET_MEAN, IMAGENET_STD)
    model = loaded.model
    assert model.init_values is None and not any("gamma" in k for k in model.state_dict())
    assert model.num_register_tokens == 0
    assert torch.equal(model.mask_token, masked_embed)
    x = torch.randn(2, 3, 32, 32)
    assert close(model(x), ibot_reference(backbone)(x))


def test_ibot_full_training_checkpoint(tmp_path):
    teacher, student = ibot_backbone(), ibot_backbone()
    head = {"head.mlp.0.weight": torch.randn(8, D), "head.last_layer.weight_g": torch.ones(16, 1)}
    document = {
        "student": {
            **{f"module.backbone.{k}": v for k, v in student.items()},
            **{f"module.{k}": v for k, v in head.items()},
        },
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small"),
    }
    path = save(document, tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_backbone(path, in_chans=3, img_size=32)
    loaded = load_backbone(path, in_chans=3, img_size=32, trust_pickle=True)
    assert loaded.source == "ibot" and loaded.info["container"] == ["teacher"] and loaded.info["prefix"] == "backbone."
    assert sorted(loaded.info["ignored"]) == ["args", "epoch", "student"]
    assert sorted(loaded.info["dropped"]["ssl-head"]) == sorted(head)
    assert loaded.info["initialised"] == {"zero-init mask token (not in the file)": ["mask_token"]}
    assert torch.all(loaded.model.mask_token == 0)
    x = torch.randn(2, 3, 32, 32)
    assert close(loaded.model(x), ibot_reference(teacher)(x))


# ----------------------------------------------------------------------------- USFM
def test_usfm_layout_matches_timm_beit(tmp_path):
    state = usfm_state(grid=2)
    path = save(state, tmp_path / "USFM_latest.pth")
    loaded = load_backbone(path, in_chans=3, img_size=None)
    assert loaded.model.img_size == (32, 32)
    assert loaded.source == "usfm" and (loaded.mean, loaded.std) == (IMAGENET_MEAN, IMAGENET_STD)
    model = loaded.model
    assert isinstance(model, BeitBackbone) and model.num_register_tokens == 0 and model.num_heads == HEADS
    assert loaded.info["dropped"] == {}  # the index buffer is checked and loaded as it is
    assert loaded.info["initialised"] == {"zero-init mask token (not in the file)": ["mask_token"]}

    reference = Beit(
        img_size=32,
        patch_size=16,
        in_chans=3,
        num_classes=0,
        global_pool="",
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        use_abs_pos_emb=False,
        use_rel_pos_bias=False,
        use_shared_rel_pos_bias=True,
        init_values=0.1,
    ).eval()
    result = reference.load_state_dict(beit_filter(dict(state), reference), strict=False)
    # timm's BEiT filter drops the index buffer; the model regenerates the identical one
    assert result.missing_keys == ["rel_pos_bias.relative_position_index"] and result.unexpected_keys == []
    x = torch.randn(2, 3, 32, 32)
    assert close(model(x), reference.forward_features(x)[:, 0])
    patches = model.get_intermediate_layers(x, 1, reshape=False)[0]
    assert close(patches, reference.forward_features(x)[:, 1:])

    grey = load_backbone(path, in_chans=1, img_size=32)
    g = torch.rand(2, 1, 32, 32)
    rgb = (g.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    assert close(grey.model((g - grey.mean[0]) / grey.std[0]), reference.forward_features(rgb)[:, 0])


def test_usfm_relative_bias_table_resized_for_another_grid(tmp_path):
    path = save(usfm_state(grid=2), tmp_path / "USFM_latest.pth")
    loaded = load_backbone(path, in_chans=3, img_size=48)
    assert loaded.info["file_grid"] == [2, 2] and loaded.info["grid"] == [3, 3] and loaded.info["pos_embed_resampled"]
    assert loaded.model.rel_pos_bias.relative_position_bias_table.shape == ((2 * 3 - 1) ** 2 + 3, HEADS)
    assert loaded.info["dropped"] == {"generated-buffer": ["rel_pos_bias.relative_position_index"]}
    reference = Beit(
        img_size=48,
        patch_size=16,
        in_chans=3,
        num_classes=0,
        global_pool="",
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        use_abs_pos_emb=False,
        use_shared_rel_pos_bias=True,
        init_values=0.1,
    ).eval()
    # timm's BEiT filter resizes the table with the same resize_rel_pos_bias_table
    result = reference.load_state_dict(beit_filter(torch.load(path, weights_only=True), reference), strict=False)
    assert result.missing_keys == ["rel_pos_bias.relative_position_index"] and result.unexpected_keys == []
    x = torch.randn(1, 3, 48, 48)
    assert close(loaded.model(x), reference.forward_features(x)[:, 0])


def test_usfm_wrong_relative_position_index_is_rejected(tmp_path):
    state = usfm_state(grid=2)
    state["rel_pos_bias.relative_position_index"] = state["rel_pos_bias.relative_position_index"].flip(0)
    path = save(state, tmp_path / "USFM_latest.pth")
    with pytest.raises(CheckpointError, match="relative_position_index"):
        load_backbone(path, in_chans=3, img_size=32)


# ----------------------------------------------------------------------------- timm
def test_plain_timm_state_dict_and_safetensors(tmp_path):
    timm_model = VisionTransformer(
        img_size=32,
        patch_size=16,
        in_chans=3,
        num_classes=5,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
    ).eval()
    state = timm_model.state_dict()
    for path in (save(state, tmp_path / "vit.pth"), tmp_path / "vit.safetensors"):
        if path.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        loaded = load_backbone(path, in_chans=3, img_size=32)
        assert loaded.source == "timm"
        assert sorted(loaded.info["dropped"]["classifier-head"]) == ["head.bias", "head.weight"]
        x = torch.randn(2, 3, 32, 32)
        expected = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
        assert close(loaded.model(x), expected)
        assert (loaded.model.interpolate_offset, loaded.model.interpolate_antialias) == (0.0, True)


def test_timm_register_model_with_embedded_prefix_positions(tmp_path):
    """timm reg model without no_embed_class: class and register slots are folded into the tokens."""
    timm_model = VisionTransformer(
        img_size=32,
        patch_size=16,
        in_chans=3,
        num_classes=0,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        reg_tokens=2,
        init_values=1e-5,
    ).eval()
    assert timm_model.pos_embed.shape == (1, 1 + 2 + 4, D)
    path = save(timm_model.state_dict(), tmp_path / "vit_reg.pth")
    loaded = load_backbone(path, in_chans=3, img_size=32)
    assert loaded.source == "timm" and loaded.model.num_register_tokens == 2 and loaded.info["file_grid"] == [2, 2]
    x = torch.randn(2, 3, 32, 32)
    assert close(loaded.model(x), timm_model(x))


# ----------------------------------------------------------------------------- strictness
def test_missing_unexpected_and_misshaped_keys_raise(tmp_path):
    state = dinov2_state(grid=2, registers=4)
    broken = dict(state)
    del broken["blocks.1.mlp.fc2.bias"]
    broken["blocks.0.attn.extra_scale"] = torch.ones(3)
    broken["norm.weight"] = torch.ones(D + 1)
    path = save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as error:
        load_backbone(path, in_chans=3, img_size=28)
    message = str(error.value)
    assert "missing keys (1): ['blocks.1.mlp.fc2.bias']" in message
    assert "unexpected keys (1): ['blocks.0.attn.extra_scale']" in message
    assert "norm.weight: file (129,) vs model (128,)" in message
    assert "nothing was loaded" in message


def test_keys_outside_the_backbone_need_a_rule(tmp_path):
    state = {f"backbone.{k}": v for k, v in dinov2_state(grid=2, in_chans=1, patch=16).items()}
    state["decode_head.conv_seg.weight"] = torch.randn(5, D, 1, 1)
    path = save(state, tmp_path / "segmenter.pth")
    with pytest.raises(CheckpointError, match="decode_head.conv_seg.weight"):
        load_backbone(path)


def test_unreadable_or_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_backbone(garbage)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_backbone(garbage, trust_pickle=True)
    resnet = save({"conv1.weight": torch.randn(8, 3, 7, 7), "fc.weight": torch.randn(2, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="patch_embed.proj.weight"):
        load_backbone(resnet)
    nested = save({"epoch": 3, "weights": [torch.zeros(1)]}, tmp_path / "nested.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_backbone(nested)


def test_geometry_conflicts_and_register_handling(tmp_path):
    path = save(dinov2_state(grid=2, registers=4), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    with pytest.raises(CheckpointError, match="arch='vit_small'"):
        load_backbone(path, arch="vit_small", in_chans=3, img_size=28)
    with pytest.raises(CheckpointError, match="embed_dim"):
        load_backbone(path, in_chans=3, img_size=28, embed_dim=256)
    with pytest.raises(CheckpointError, match="unsupported override"):
        load_backbone(path, in_chans=3, img_size=28, qkv_bias=False)
    with pytest.raises(CheckpointError, match="2 was requested|num_register_tokens=2"):
        load_backbone(path, in_chans=3, img_size=28, num_register_tokens=2)
    with pytest.raises(CheckpointError, match="keys say 'dinov2'"):
        load_backbone(path, source="usfm", in_chans=3, img_size=28)
    dropped = load_backbone(path, in_chans=3, img_size=28, num_register_tokens=0)
    assert dropped.model.num_register_tokens == 0 and dropped.info["dropped"]["registers-dropped"] == ["reg_token"]
    assert dropped.model.forward_features(torch.randn(1, 3, 28, 28))["x_prenorm"].shape == (1, 5, D)
    explicit = load_backbone(path, source="ibot", in_chans=3, img_size=28, num_heads=4)
    assert (
        explicit.source == "ibot"
        and explicit.model.num_heads == 4
        and explicit.info["detected_by"].startswith("requested")
    )


def test_drop_path_passed_to_loaded_model(tmp_path):
    path = save(dinov2_state(grid=2, registers=4), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    uniform = load_backbone(path, in_chans=3, img_size=28, drop_path_rate=0.4)
    assert uniform.model.drop_path_rates() == pytest.approx([0.4, 0.4])
    linear = load_backbone(path, in_chans=3, img_size=28, drop_path_rate=0.4, drop_path_uniform=False)
    assert linear.model.drop_path_rates() == pytest.approx([0.0, 0.4])


# ----------------------------------------------------------------------------- export
def test_save_load_roundtrip_is_exact(tmp_path):
    model = build_vit("vit_tiny", img_size=32, depth=2, embed_dim=64, num_heads=2, num_register_tokens=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    path = tmp_path / "export" / "backbone.pt"
    document = save_backbone(model, path, {"iteration": 42})
    assert sorted(p.name for p in path.parent.iterdir()) == ["backbone.json", "backbone.pt"]  # no temp files left
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar == document
    assert {
        k: sidecar[k]
        for k in (
            "arch",
            "patch_size",
            "in_chans",
            "num_register_tokens",
            "embed_dim",
            "depth",
            "num_heads",
            "init_values",
            "img_size",
            "mean",
            "std",
        )
    } == {
        "arch": "custom",
        "patch_size": 16,
        "in_chans": 1,
        "num_register_tokens": 4,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "init_values": 1e-5,
        "img_size": 32,
        "mean": list(FUS_MEAN),
        "std": list(FUS_STD),
    }
    assert sidecar["extra"] == {"iteration": 42}
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(model.state_dict())  # a plain state dict in timm key names

    loaded = load_backbone(path, img_size=None)  # None: the file's own 2x2 grid, i.e. 32 px
    assert loaded.source == "ultradino" and loaded.info["detected_by"].startswith("sidecar")
    assert loaded.info["grid"] == [2, 2] and not loaded.info["pos_embed_resampled"]
    assert (loaded.mean, loaded.std) == (FUS_MEAN, FUS_STD)
    assert loaded.info["dropped"] == {} and loaded.info["initialised"] == {}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    model.eval()
    for size in (32, 64):
        x = torch.randn(2, 1, size, size)
        assert torch.equal(loaded.model(x), model(x))


def test_sidecar_normalisation_and_hash_are_enforced(tmp_path):
    model = build_vit("vit_tiny", img_size=32, depth=1, embed_dim=64, num_heads=2, in_chans=3)
    path = tmp_path / "backbone.pt"
    save_backbone(model, path, mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3))
    assert load_backbone(path, in_chans=3, img_size=32).mean == (0.4, 0.4, 0.4)
    one_channel = load_backbone(path, in_chans=1, img_size=32)
    assert one_channel.mean == pytest.approx((0.4,)) and one_channel.std == pytest.approx((0.3,))
    # a weights file replaced after the sidecar was written is refused
    torch.save(build_vit("vit_tiny", img_size=32, depth=1, embed_dim=64, num_heads=2, in_chans=3).state_dict(), path)
    with pytest.raises(CheckpointError, match="different weights file"):
        load_backbone(path, in_chans=3, img_size=32)
    with pytest.raises(ValueError, match="3 value"):
        save_backbone(model, tmp_path / "other.pt", mean=(0.5,), std=(0.2,))
    with pytest.raises(TypeError):
        save_backbone(torch.nn.Linear(2, 2), tmp_path / "linear.pt")


def test_channel_adaptation_1_to_3_on_replicated_input(tmp_path):
    model = build_vit("vit_tiny", img_size=32, depth=2, embed_dim=64, num_heads=2).eval()
    path = tmp_path / "backbone.pt"
    save_backbone(model, path)
    loaded = load_backbone(path, in_chans=3, img_size=32)
    assert (loaded.mean, loaded.std) == (FUS_MEAN * 3, FUS_STD * 3)
    x = torch.randn(2, 1, 32, 32)
    assert close(loaded.model(x.expand(-1, 3, -1, -1)), model(x))


def test_scratch_backbone(tmp_path):
    scratch = load_backbone(None, arch="vit_tiny", img_size=32, depth=2)
    assert scratch.source == "scratch" and (scratch.mean, scratch.std) == (FUS_MEAN, FUS_STD)
    assert scratch.model.num_register_tokens == 4 and scratch.model.n_blocks == 2 and not scratch.model.training
    rgb = load_backbone(None, arch="vit_tiny", in_chans=3, img_size=32, depth=2, num_register_tokens=0)
    assert (rgb.mean, rgb.std) == (IMAGENET_MEAN, IMAGENET_STD) and rgb.model.num_register_tokens == 0
    with pytest.raises(CheckpointError, match="unknown source"):
        load_backbone(None, source="mae")
