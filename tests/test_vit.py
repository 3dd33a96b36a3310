"""DinoVisionTransformer / BeitBackbone: shapes, mask token, intermediate layers, drop path, timm parity."""

from __future__ import annotations

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ultradino_monai.networks.vit import ARCHS, BeitBackbone, DinoVisionTransformer, build_vit

SMALL = dict(embed_dim=32, depth=3, num_heads=2)


def small_vit(**kwargs) -> DinoVisionTransformer:
    params = dict(arch="vit_tiny", img_size=32, **SMALL)
    params.update(kwargs)
    torch.manual_seed(0)
    return build_vit(**params).eval()


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("size,patch", [(32, 16), (64, 16), (32, 8)])
def test_output_shapes(in_chans, registers, size, patch):
    model = small_vit(in_chans=in_chans, num_register_tokens=registers, patch_size=patch)
    n = (size // patch) ** 2
    x = torch.randn(2, in_chans, size, size)
    out = model.forward_features(x)
    assert out["x_norm_clstoken"].shape == (2, 32)
    assert out["x_norm_regtokens"].shape == (2, registers, 32)
    assert out["x_norm_patchtokens"].shape == (2, n, 32)
    assert out["x_prenorm"].shape == (2, 1 + registers + n, 32)
    assert out["masks"] is None
    assert torch.equal(model(x), out["x_norm_clstoken"])
    # the normed outputs are the final LayerNorm of x_prenorm, split [CLS, registers, patches]
    normed = model.norm(out["x_prenorm"])
    assert torch.equal(normed[:, 0], out["x_norm_clstoken"])
    assert torch.equal(normed[:, 1 + registers :], out["x_norm_patchtokens"])


def test_attributes_and_config():
    model = small_vit(num_register_tokens=4, patch_size=8)
    assert (model.embed_dim, model.patch_size, model.num_register_tokens, model.n_blocks) == (32, 8, 4, 3)
    assert isinstance(model.patch_size, int)
    config = model.config()
    assert config["arch"] == "custom"  # vit_tiny resized to depth 3 is no longer vit_tiny
    assert {k: config[k] for k in ("embed_dim", "depth", "num_heads", "img_size", "in_chans")} == {
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 2,
        "img_size": 32,
        "in_chans": 1,
    }
    tiny = build_vit("vit_tiny", img_size=32)
    assert tiny.arch == "vit_tiny"
    assert (tiny.embed_dim, tiny.n_blocks, tiny.num_heads) == tuple(ARCHS["vit_tiny"].values()) == (192, 12, 3)


def test_state_dict_keys_are_timm_layout():
    model = small_vit(depth=1, num_register_tokens=4)
    keys = set(model.state_dict())
    block = {
        f"blocks.0.{name}"
        for name in (
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "ls1.gamma",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
            "ls2.gamma",
        )
    }
    expected = block | {
        "cls_token",
        "reg_token",
        "pos_embed",
        "mask_token",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    assert keys == expected
    state = model.state_dict()
    assert state["pos_embed"].shape == (1, 4, 32)  # patches only (no_embed_class)
    assert state["mask_token"].shape == (1, 32)
    assert state["reg_token"].shape == (1, 4, 32)


def test_initialisation_follows_dinov2():
    torch.manual_seed(0)
    model = build_vit("vit_small", img_size=224)
    assert model.cls_token.abs().max() < 1e-4 and model.reg_token.abs().max() < 1e-4  # N(0, 1e-6)
    assert 0.018 < model.pos_embed.std().item() < 0.022  # trunc-normal(0.02)
    assert model.pos_embed.abs().max() <= 2.0  # truncated at ±2 (timm's absolute bounds)
    qkv = model.blocks[0].attn.qkv
    assert 0.018 < qkv.weight.std().item() < 0.022 and torch.all(qkv.bias == 0)
    assert torch.all(model.mask_token == 0)
    assert torch.allclose(model.blocks[5].ls2.gamma, torch.full((384,), 1e-5))
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6


def test_no_layer_scale_when_init_values_none():
    model = small_vit(init_values=None)
    assert not any("gamma" in key for key in model.state_dict())


def test_mask_token_substituted_before_pos_embed():
    model = small_vit(num_register_tokens=4)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 1, 32, 32)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 1] = masks[1, 3] = True
    tokens = model.prepare_tokens(x, masks)
    plain = model.prepare_tokens(x)
    pos = model.pos_embed[0]
    # masked patch p of image b becomes exactly mask_token + pos_embed[p]; nothing else changes
    assert torch.allclose(tokens[0, 1 + 4 + 1], model.mask_token[0] + pos[1], atol=1e-6)
    assert torch.allclose(tokens[1, 1 + 4 + 3], model.mask_token[0] + pos[3], atol=1e-6)
    changed = (tokens - plain).abs().sum(-1) > 0
    expected = torch.zeros_like(changed)
    expected[0, 6] = expected[1, 8] = True
    assert torch.equal(changed, expected)

    out = model.forward_features(x, masks)
    assert out["masks"] is masks
    assert not torch.allclose(out["x_norm_patchtokens"], model.forward_features(x)["x_norm_patchtokens"])


def test_all_false_masks_change_nothing():
    model = small_vit()
    x = torch.randn(3, 1, 32, 32)
    masks = torch.zeros(3, 4, dtype=torch.bool)
    a, b = model.forward_features(x, masks), model.forward_features(x)
    assert torch.equal(a["x_prenorm"], b["x_prenorm"])
    # a [B, h, w] mask is accepted too
    c = model.forward_features(x, masks.reshape(3, 2, 2))
    assert torch.equal(a["x_prenorm"], c["x_prenorm"])


def test_bad_masks_and_inputs_are_rejected():
    model = small_vit()
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(TypeError, match="bool"):
        model.forward_features(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="patches"):
        model.forward_features(x, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 1, 40, 32))
    with pytest.raises(ValueError, match="unknown arch"):
        build_vit("vit_huge")
    with pytest.raises(TypeError, match="qkv_bias"):
        build_vit("vit_tiny", qkv_bias=False)


def test_get_intermediate_layers():
    model = small_vit(num_register_tokens=4, depth=4, img_size=64)
    x = torch.randn(2, 1, 64, 64)
    maps = model.get_intermediate_layers(x, [0, 1, 3])
    assert len(maps) == 3 and all(m.shape == (2, 32, 4, 4) for m in maps)
    last2 = model.get_intermediate_layers(x, 2, reshape=False)
    assert len(last2) == 2 and all(t.shape == (2, 16, 32) for t in last2)
    # int n = the last n blocks; a negative index counts from the end
    assert torch.equal(last2[1], model.get_intermediate_layers(x, [-1], reshape=False)[0])
    assert torch.equal(last2[0], model.get_intermediate_layers(x, [2], reshape=False)[0])
    # the last block, normed, is what forward_features returns (registers excluded)
    assert torch.allclose(last2[1], model.forward_features(x)["x_norm_patchtokens"], atol=1e-6)
    # norm flag: norm=True is the final LayerNorm of the norm=False tokens (CLS included)
    raw = model.get_intermediate_layers(x, [1], norm=False, reshape=False, return_class_token=True)[0]
    normed = model.get_intermediate_layers(x, [1], norm=True, reshape=False, return_class_token=True)[0]
    assert not torch.allclose(raw[0], normed[0])
    assert torch.allclose(model.norm(raw[0]), normed[0], atol=1e-6)
    assert torch.allclose(model.norm(raw[1]), normed[1], atol=1e-6)
    assert normed[1].shape == (2, 32)
    # reshape is a pure re-layout: token n = row n // w, column n % w
    flat = model.get_intermediate_layers(x, [3], reshape=False)[0]
    grid = model.get_intermediate_layers(x, [3], reshape=True)[0]
    assert torch.equal(grid[:, :, 1, 2], flat[:, 1 * 4 + 2])
    # the order of the request is kept
    a, b = model.get_intermediate_layers(x, [3, 0])
    assert torch.equal(a, grid) and torch.equal(b, maps[0])
    for bad in ([4], [0, 0], [], 0, 5):
        with pytest.raises(ValueError):
            model.get_intermediate_layers(x, bad)


def test_drop_path_rules_and_train_mode():
    uniform = small_vit(drop_path_rate=0.3, depth=4)
    assert uniform.drop_path_rates() == pytest.approx([0.3] * 4)
    linear = small_vit(drop_path_rate=0.3, depth=4, drop_path_uniform=False)
    assert linear.drop_path_rates() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(8, 1, 32, 32)
    assert torch.equal(uniform(x), uniform(x))  # eval: deterministic
    uniform.train()
    torch.manual_seed(1)
    a = uniform(x)
    torch.manual_seed(2)
    b = uniform(x)
    assert not torch.allclose(a, b)
    no_drop = small_vit(drop_path_rate=0.0).train()
    assert torch.equal(no_drop(x), no_drop(x))


def test_matches_timm_vision_transformer_with_same_weights():
    """With offset-0 antialiased interpolation the model is timm's reg4 DINOv2 ViT, also at other sizes."""
    model = small_vit(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True, img_size=64)
    reference = VisionTransformer(
        img_size=64,
        patch_size=16,
        in_chans=1,
        num_classes=0,
        embed_dim=32,
        depth=3,
        num_heads=2,
        init_values=1e-5,
        reg_tokens=4,
        no_embed_class=True,
        dynamic_img_size=True,
    ).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "mask_token"}
    reference.load_state_dict(state, strict=True)
    for size in (64, 32, 96):
        x = torch.randn(2, 1, size, size)
        assert torch.allclose(model(x), reference(x), atol=1e-5)


def test_dinov2_interpolation_offset():
    model = small_vit(img_size=64)  # 4x4 grid, offset 0.1 / no antialias (DINOv2 training default)
    assert model.interpolate_pos_embed(4, 4) is model.pos_embed
    with torch.no_grad():
        model.pos_embed.fill_(0.25)
    # bicubic interpolation reproduces a constant field exactly, at any (non-square) grid
    resized = model.interpolate_pos_embed(2, 6)
    assert resized.shape == (1, 12, 32) and torch.allclose(resized, torch.full_like(resized, 0.25), atol=1e-6)
    with torch.no_grad():
        model.pos_embed.normal_()
    offset = model.interpolate_pos_embed(6, 6)
    model.interpolate_offset = 0.0
    by_size = model.interpolate_pos_embed(6, 6)
    expected = resample_abs_pos_embed(model.pos_embed, (6, 6), (4, 4), num_prefix_tokens=0, antialias=False)
    assert torch.allclose(by_size, expected)
    assert not torch.allclose(offset, by_size)  # the 0.1 kludge samples at slightly different points


def test_trace_and_onnx_export(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = small_vit(num_register_tokens=4)
    x = torch.randn(2, 1, 32, 32)
    traced = torch.jit.trace(model, x)
    assert torch.allclose(traced(x), model(x), atol=1e-6)
    other = torch.randn(5, 1, 32, 32)
    assert torch.allclose(traced(other), model(other), atol=1e-6)

    path = tmp_path / "vit.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["cls"],
        dynamic_axes={"image": {0: "batch"}, "cls": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": other.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(other), atol=1e-5)


def test_beit_backbone_interface():
    torch.manual_seed(0)
    model = BeitBackbone(img_size=32, patch_size=16, in_chans=1, embed_dim=32, depth=3, num_heads=2).eval()
    x = torch.randn(2, 1, 32, 32)
    out = model.forward_features(x)
    assert out["x_norm_clstoken"].shape == (2, 32)
    assert out["x_norm_regtokens"].shape == (2, 0, 32)
    assert out["x_norm_patchtokens"].shape == (2, 4, 32)
    assert out["x_prenorm"].shape == (2, 5, 32)
    assert torch.equal(model(x), out["x_norm_clstoken"])
    maps = model.get_intermediate_layers(x, [0, 2])
    assert [m.shape for m in maps] == [(2, 32, 2, 2)] * 2
    assert torch.allclose(model.get_intermediate_layers(x, 1, reshape=False)[0], out["x_norm_patchtokens"], atol=1e-6)
    masks = torch.tensor([[True, False, False, False], [False] * 4])
    masked = model.forward_features(x, masks)["x_norm_patchtokens"]
    assert not torch.allclose(masked[0], out["x_norm_patchtokens"][0])
    assert torch.equal(model.forward_features(x, torch.zeros(2, 4, dtype=torch.bool))["x_prenorm"], out["x_prenorm"])
    with pytest.raises(ValueError, match="relative position bias"):
        model(torch.randn(1, 1, 64, 64))
    assert (model.num_register_tokens, model.patch_size, model.n_blocks) == (0, 16, 3)
    assert model.blocks[0].gamma_1[0].item() == pytest.approx(0.1)


def test_attention_runs_through_scaled_dot_product_attention(monkeypatch):
    """Every block's attention calls F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model = build_vit("vit_tiny", patch_size=16, in_chans=1, num_register_tokens=4, img_size=64, depth=3)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :5] = True
    model.forward_features(torch.randn(2, 1, 64, 64), masks=masks)
    # 3 blocks, [B, heads, 1 CLS + 4 registers + 16 patches, head dim]
    assert calls == [torch.Size([2, 3, 21, 64])] * 3
