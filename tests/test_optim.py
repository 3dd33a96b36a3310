"""The shared optimisation module: AdamW groups against the hand-written formula, kernel choice, lr schedules."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from ultradino_monai.networks.classifier import Classifier
from ultradino_monai.networks.dino_model import DinoModel
from ultradino_monai.networks.heads import DINOHead
from ultradino_monai.networks.segmenter import Segmenter
from ultradino_monai.networks.vit import build_vit
from ultradino_monai.optim import (
    WarmupPolyLambda,
    adamw_kernel,
    build_adamw,
    warmup_cosine_scheduler,
    warmup_poly_scheduler,
)

DEPTH = 4


def tiny_vit(img_size=64, depth=DEPTH, **kwargs):
    # ViT geometry of UltraDINO (patch 16, 4 registers, LayerScale) at a width that runs in milliseconds
    return build_vit(
        "vit_tiny",
        depth=depth,
        embed_dim=32,
        num_heads=2,
        img_size=img_size,
        num_register_tokens=4,
        init_values=0.1,
        **kwargs,
    )


def _expected(name: str, lr: float, wd: float, rate: float, patch_mult: float) -> tuple[float, float]:
    """The recipe written out by hand: embeddings are layer 0, block i is layer i + 1, the rest DEPTH + 1."""
    parts = name.split(".")
    if parts[0] == "backbone" and parts[1] in ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token"):
        layer = 0
    elif parts[0] == "backbone" and parts[1] == "blocks":
        layer = int(parts[2]) + 1
    else:
        layer = DEPTH + 1
    expected_lr = lr * rate ** (DEPTH + 1 - layer) * (patch_mult if parts[1] == "patch_embed" else 1.0)
    no_decay = parts[-1] == "bias" or "norm" in name or parts[-1] == "gamma"
    return expected_lr, 0.0 if no_decay else wd


def _per_parameter(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert names[id(parameter)] not in rates, "a parameter is in two groups"
            rates[names[id(parameter)]] = (group["lr"], group["weight_decay"])
    return rates


@pytest.mark.parametrize(
    "kind, lr, wd, rate, patch_mult",
    [
        ("pretrain", 1e-3, 0.04, 0.9, 0.2),
        ("classification", 1e-4, 0.01, 0.65, 0.2),
        ("segmentation", 1e-3, 0.01, 0.3, 1.0),
    ],
)
def test_every_trainable_parameter_gets_the_recipe_rates(kind, lr, wd, rate, patch_mult):
    torch.manual_seed(0)
    if kind == "pretrain":
        model = DinoModel(tiny_vit(), DINOHead(32, 16, hidden_dim=32, bottleneck_dim=8))
    elif kind == "classification":
        model = Classifier(tiny_vit(), 3)
    else:
        model = Segmenter(tiny_vit(), 3)
    optimizer = build_adamw(model, lr=lr, weight_decay=wd, layer_decay_rate=rate, patch_embed_lr_mult=patch_mult)
    rates = _per_parameter(model, optimizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(rates) == sorted(trainable)  # frozen ones (the classifier's mask token) are left out
    for name in trainable:
        assert rates[name] == pytest.approx(_expected(name, lr, wd, rate, patch_mult), rel=1e-12), name
    # equal rates share a group (the DINO head's last layer apart: pretraining freezes its lr at first)
    assert len(optimizer.param_groups) == len({(rates[n], "last_layer" in n) for n in trainable})


def test_wrappers_are_stripped_and_decay_off_is_one_group():
    model = Classifier(tiny_vit(), 3)
    wrapped = torch.compile(nn.DataParallel(model))  # compiled lazily: nothing runs until it is called
    optimizer = build_adamw(wrapped, lr=1e-3, weight_decay=0.05, layer_decay_rate=0.5)
    assert _per_parameter(model, optimizer)["backbone.blocks.0.attn.qkv.weight"] == pytest.approx((1e-3 * 0.5**4, 0.05))

    flat = build_adamw(wrapped, lr=1e-4, weight_decay=0.01, layer_decay=False)
    assert len(flat.param_groups) == 1
    assert set(_per_parameter(model, flat).values()) == {(1e-4, 0.01)}


def test_layer_decay_is_what_adam_really_steps():
    # Adam's first step moves every weight by its group lr (|m / sqrt(v)| = 1 for a non-zero gradient)
    model = Segmenter(tiny_vit(), num_classes=3)
    lr, rate = 1e-3, 0.5
    optimizer = build_adamw(model, lr=lr, weight_decay=0.0, layer_decay_rate=rate)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(2, 1, 64, 64)).square().mean().backward()
    optimizer.step()
    parameters = dict(model.named_parameters())
    for block in range(DEPTH):
        name = f"backbone.blocks.{block}.mlp.fc1.weight"
        moved = (parameters[name].detach() - before[name]).abs()[parameters[name].grad.abs() > 1e-6]
        np.testing.assert_allclose(moved.numpy(), lr * rate ** (DEPTH - block), rtol=1e-2)


def test_kernel_choice_keeps_the_cpu_numbers_of_torchs_single_tensor_adamw():
    assert adamw_kernel([torch.zeros(2)]) == {"foreach": True}
    if torch.cuda.is_available():
        assert adamw_kernel([torch.zeros(2, device="cuda")]) == {"fused": True}
        assert adamw_kernel([torch.zeros(2, device="cuda"), torch.zeros(2)]) == {"foreach": True}

    torch.manual_seed(0)
    ours = Classifier(tiny_vit(), 3)
    reference = copy.deepcopy(ours)
    optimizer = build_adamw(ours, lr=1e-3, weight_decay=0.05, layer_decay_rate=0.65, patch_embed_lr_mult=0.2)
    names = {id(p): n for n, p in ours.named_parameters()}
    twins = dict(reference.named_parameters())
    # torch's for-loop AdamW, one group per parameter with the rates build_adamw chose
    plain = torch.optim.AdamW(
        [
            {"params": [twins[names[id(p)]]], "lr": group["lr"], "weight_decay": group["weight_decay"]}
            for group in optimizer.param_groups
            for p in group["params"]
        ],
        foreach=False,
    )
    for step in range(3):
        for model in (ours, reference):
            for index, parameter in enumerate(model.parameters()):
                if parameter.requires_grad:
                    wave = torch.sin(torch.arange(parameter.numel(), dtype=torch.float32) * (0.3 + index) + step)
                    parameter.grad = wave.reshape(parameter.shape)
        optimizer.step()
        plain.step()
    for name, parameter in ours.named_parameters():
        assert torch.equal(parameter, twins[name]), name


def test_warmup_cosine_factor_is_the_hand_computed_curve():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}])
    epochs, per_epoch, warmup_epochs = 6, 9, 1
    scheduler = warmup_cosine_scheduler(optimizer, epochs, per_epoch, warmup_epochs)
    total, warmup = epochs * per_epoch, warmup_epochs * per_epoch
    for t in range(total + 5):
        if t < warmup:
            factor = t / (warmup - 1)  # linspace(0, 1, warmup): the last warmup step reaches the peak
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (min(t, total - 1) - warmup) / (total - warmup)))
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * factor, 0.01 * factor], abs=1e-15)
        optimizer.step()
        scheduler.step()
    with pytest.raises(ValueError, match="no iterations"):
        warmup_cosine_scheduler(optimizer, 0, 9)


def test_warmup_poly_schedule_values():
    schedule = WarmupPolyLambda(total_iterations=1000, warmup_iterations=100, warmup_start_factor=1e-6, power=1.0)
    assert schedule(0) == pytest.approx(1e-6)
    assert schedule(50) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert schedule(100) == pytest.approx(1.0)
    assert schedule(550) == pytest.approx(0.5)
    assert schedule(1000) == 0.0 and schedule(1200) == 0.0
    assert WarmupPolyLambda(1000, 0, power=2.0)(500) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="warmup_iterations"):
        WarmupPolyLambda(100, 100)

    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 1e-4}])
    scheduler = warmup_poly_scheduler(optimizer, 10, warmup_iterations=2)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs[2], [1e-3, 1e-4])  # peak after warmup, per-group ratio kept
    np.testing.assert_allclose(lrs[6], [5e-4, 5e-5])
    assert "lr_lambdas" in scheduler.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel needs CUDA")
def test_cuda_model_gets_the_fused_kernel_with_the_foreach_numbers():
    torch.manual_seed(0)
    fused_model = Classifier(tiny_vit(), 3).cuda()
    foreach_model = copy.deepcopy(fused_model)
    fused = build_adamw(fused_model, lr=1e-3, weight_decay=0.05, layer_decay_rate=0.65)
    assert fused.defaults["fused"] is True
    twins = dict(foreach_model.named_parameters())
    names = {id(p): n for n, p in fused_model.named_parameters()}
    reference = torch.optim.AdamW(
        [
            {
                "params": [twins[names[id(p)]] for p in group["params"]],
                "lr": group["lr"],
                "weight_decay": group["weight_decay"],
            }
            for group in fused.param_groups
        ],
        foreach=True,
    )
    # one backward per step, its gradients given to both: the comparison isolates the optimiser kernels from
    # the run-to-run noise of GPU forward/backward kernels, which Adam's first steps amplify for tiny gradients
    fused_model.eval()
    images = torch.randn(4, 1, 64, 64, device="cuda")
    for _ in range(3):
        fused.zero_grad()
        reference.zero_grad()
        fused_model(images).square().mean().backward()
        for name, parameter in fused_model.named_parameters():
            if parameter.grad is not None:
                twins[name].grad = parameter.grad.clone()
        fused.step()
        reference.step()
    for (name, a), b in zip(fused_model.named_parameters(), foreach_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
