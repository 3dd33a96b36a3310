"""Schedules, layer-wise lr decay parameter groups and the optimiser update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from ultradino_monai.networks.heads import DINOHead
from ultradino_monai.optim import (
    apply_optim_scheduler,
    cosine_schedule,
    fuse_params_groups,
    get_params_groups_with_decay,
)
from ultradino_monai.ssl import build_dino_schedules, linear_warmup_then_constant, scaled_lr

# ----------------------------------------------------------------------------- schedules


def test_cosine_schedule_values():
    s = cosine_schedule(1.0, 0.0, total_iters=115, warmup_iters=10, start_warmup_value=0.2, freeze_iters=5)
    assert s.shape == (115,)
    assert (s[:5] == 0).all()  # frozen
    assert s[5] == pytest.approx(0.2)  # warmup start
    assert s[14] == pytest.approx(1.0)  # warmup end reaches the base value
    assert s[15] == pytest.approx(1.0)  # cosine starts at the base value
    assert s[15 + 50] == pytest.approx(0.5)  # cosine midpoint: (base + final) / 2
    assert s[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))  # last entry ~ final
    assert s[-1] < 3e-4
    assert np.all(np.diff(s[15:]) <= 0)
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, total_iters=10, warmup_iters=11)


def test_linear_warmup_then_constant():
    s = linear_warmup_then_constant(0.04, 0.07, warmup_iters=4, total_iters=7)
    np.testing.assert_allclose(s, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07, 0.07])
    np.testing.assert_allclose(linear_warmup_then_constant(0.0, 1.0, 5, 3), [0.0, 0.25, 0.5])


def test_scaled_lr():
    assert scaled_lr(0.004, 512) == pytest.approx(0.004 * math.sqrt(0.5))  # 2.83e-3, reference section 2.3
    assert scaled_lr(0.004, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.004, 512, "none") == 0.004
    with pytest.raises(ValueError):
        scaled_lr(0.004, 512, "linear")


def test_build_dino_schedules_recipe_shape():
    # The recipe (section 2.3) at 10 iterations per "epoch".
    sched = build_dino_schedules(
        base_lr=0.004,
        global_batch_size=512,
        epochs=100,
        epoch_length=10,
        warmup_epochs=10,
        min_lr=1e-6,
        weight_decay=0.04,
        weight_decay_end=0.4,
        momentum_teacher=0.992,
        final_momentum_teacher=1.0,
        teacher_temp=0.07,
        warmup_teacher_temp=0.04,
        warmup_teacher_temp_epochs=30,
        freeze_last_layer_epochs=1,
    )
    peak = 0.004 * math.sqrt(512 / 1024)
    assert sched.total_iters == 1000
    assert sched.lr[0] == 0.0
    assert sched.lr[99] == pytest.approx(peak)  # end of the 10-epoch warmup
    assert sched.lr[100 + 450] == pytest.approx((peak + 1e-6) / 2)  # cosine midpoint
    assert sched.lr[-1] == pytest.approx(1e-6, abs=2e-8)
    assert sched.wd[0] == pytest.approx(0.04)
    assert sched.wd[500] == pytest.approx(0.22)
    assert sched.momentum[0] == pytest.approx(0.992)
    assert sched.momentum[500] == pytest.approx(0.996)
    assert sched.momentum[-1] == pytest.approx(1.0, abs=1e-7)
    assert sched.teacher_temp[0] == pytest.approx(0.04)
    assert sched.teacher_temp[150] == pytest.approx(0.04 + 0.03 * 150 / 299)
    assert sched.teacher_temp[299] == pytest.approx(0.07)
    assert (sched.teacher_temp[300:] == 0.07).all()
    assert (sched.last_layer_lr[:10] == 0).all()
    np.testing.assert_array_equal(sched.last_layer_lr[10:], sched.lr[10:])
    at = sched.at(99)
    assert at["lr"] == pytest.approx(peak) and at["last_layer_lr"] == pytest.approx(peak)
    assert sched.at(5000) == {"lr": 1e-6, "wd": 0.4, "momentum": 1.0, "teacher_temp": 0.07, "last_layer_lr": 1e-6}


# ----------------------------------------------------------------------------- param groups


@pytest.fixture(scope="module")
def student() -> nn.ModuleDict:
    backbone = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=32,
        embed_dim=16,
        depth=12,
        num_heads=2,
        in_chans=1,
        reg_tokens=4,
        no_embed_class=True,
        init_values=1e-5,
        num_classes=0,
    )
    return nn.ModuleDict({"backbone": backbone, "dino_head": DINOHead(16, out_dim=8, hidden_dim=8, bottleneck_dim=4)})


def _by_name(groups):
    return {g["name"]: g for g in groups}


def test_param_group_multipliers(student):
    groups = _by_name(get_params_groups_with_decay(student, lr_decay_rate=0.9, patch_embed_lr_mult=0.2))
    expected = {
        # name: (lr_multiplier, wd_multiplier)
        "backbone.blocks.0.attn.qkv.weight": (0.9**12, 1.0),
        "backbone.blocks.0.attn.qkv.bias": (0.9**12, 0.0),
        "backbone.blocks.11.mlp.fc1.weight": (0.9, 1.0),
        "backbone.blocks.0.ls1.gamma": (0.9**12, 0.0),
        "backbone.blocks.5.norm1.weight": (0.9**7, 0.0),
        "backbone.patch_embed.proj.weight": (0.9**13 * 0.2, 1.0),
        "backbone.patch_embed.proj.bias": (0.9**13 * 0.2, 0.0),
        "backbone.pos_embed": (0.9**13, 1.0),
        "backbone.cls_token": (0.9**13, 1.0),
        "backbone.reg_token": (0.9**13, 1.0),
        "backbone.norm.weight": (1.0, 0.0),
        "dino_head.mlp.0.weight": (1.0, 1.0),
        "dino_head.last_layer.parametrizations.weight.original1": (1.0, 1.0),
    }
    for name, (lr_mult, wd_mult) in expected.items():
        assert groups[name]["lr_multiplier"] == pytest.approx(lr_mult), name
        assert groups[name]["wd_multiplier"] == wd_mult, name
    assert groups["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.0508, abs=1e-4)
    last = {n for n, g in groups.items() if g["is_last_layer"]}
    assert last == {
        "dino_head.last_layer.parametrizations.weight.original0",
        "dino_head.last_layer.parametrizations.weight.original1",
    }
    assert len(groups) == sum(1 for p in student.parameters() if p.requires_grad)


def test_param_groups_on_wrapped_names_and_head_alone(student):
    named = [(f"module.{n}", p) for n, p in student.named_parameters()]
    groups = _by_name(get_params_groups_with_decay(named))
    assert groups["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.9**12)
    head_groups = get_params_groups_with_decay(student["dino_head"])
    assert {g["lr_multiplier"] for g in head_groups} == {1.0}
    with pytest.raises(ValueError, match="num_layers"):
        get_params_groups_with_decay(student, num_layers=6)


def test_fuse_and_apply_optim_scheduler(student):
    groups = get_params_groups_with_decay(student)
    fused = fuse_params_groups(groups)
    keys = {(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups}
    assert len(fused) == len(keys)
    assert sum(len(g["params"]) for g in fused) == len(groups)
    optimizer = torch.optim.AdamW(fused, betas=(0.9, 0.999))
    apply_optim_scheduler(optimizer, lr=1e-3, wd=0.04, last_layer_lr=0.0)
    for group in optimizer.param_groups:
        if group["is_last_layer"]:
            assert group["lr"] == 0.0
        else:
            assert group["lr"] == pytest.approx(1e-3 * group["lr_multiplier"])
        assert group["weight_decay"] == pytest.approx(0.04 * group["wd_multiplier"])
    plain = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(KeyError, match="get_params_groups_with_decay"):
        apply_optim_scheduler(plain, 1e-3, 0.04, 0.0)
