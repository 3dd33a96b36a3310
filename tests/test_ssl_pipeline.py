"""One DINOv2 training step built only from the ssl pieces and a tiny timm ViT (wiring check)."""

from __future__ import annotations

import copy

import timm
import torch
from torch import nn

from ultradino_monai.networks.heads import DINOHead
from ultradino_monai.optim import apply_optim_scheduler, fuse_params_groups, get_params_groups_with_decay
from ultradino_monai.ssl import (
    DINOLoss,
    KoLeoLoss,
    MultiCropMaskCollate,
    build_dino_schedules,
    iBOTPatchLoss,
    update_ema,
)

N_REG = 4


def _tokens(backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = backbone.forward_features(images)  # [n, 1 + registers + patches, D], final norm applied
    return x[:, 0], x[:, 1 + N_REG :]


def test_one_training_step_runs_and_moves_the_teacher():
    torch.manual_seed(0)
    batch, n_local, k = 4, 2, 32
    backbone = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=32,
        embed_dim=16,
        depth=2,
        num_heads=2,
        in_chans=1,
        reg_tokens=N_REG,
        no_embed_class=True,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
    )
    student = nn.ModuleDict({"backbone": backbone, "dino_head": DINOHead(16, k, hidden_dim=16, bottleneck_dim=8)})
    teacher = copy.deepcopy(student).requires_grad_(False)
    dino_loss, ibot_loss, koleo = DINOLoss(k), iBOTPatchLoss(k), KoLeoLoss()
    schedules = build_dino_schedules(
        base_lr=0.004,
        global_batch_size=batch,
        epochs=2,
        epoch_length=3,
        warmup_epochs=1,
        min_lr=1e-6,
        weight_decay=0.04,
        weight_decay_end=0.4,
        momentum_teacher=0.992,
        final_momentum_teacher=1.0,
        teacher_temp=0.07,
        warmup_teacher_temp=0.04,
        warmup_teacher_temp_epochs=1,
        freeze_last_layer_epochs=1,
    )
    optimizer = torch.optim.AdamW(fuse_params_groups(get_params_groups_with_decay(student)))

    samples = [
        {
            "global_0": torch.rand(1, 32, 32),
            "global_1": torch.rand(1, 32, 32),
            **{f"local_{i}": torch.rand(1, 16, 16) for i in range(n_local)},
        }
        for _ in range(batch)
    ]
    data = MultiCropMaskCollate(n_tokens=4, seed=0)(samples)
    values = schedules.at(1)
    apply_optim_scheduler(optimizer, values["lr"], values["wd"], values["last_layer_lr"])

    with torch.no_grad():
        t_cls, t_patch = _tokens(teacher["backbone"], data["global_crops"])
        t_cls_logits = teacher["dino_head"](t_cls)
        t_patch_logits = teacher["dino_head"](t_patch.flatten(0, 1)[data["mask_indices"]])
        t_cls_probs = dino_loss.softmax_center_teacher(t_cls_logits, values["teacher_temp"])
        t_patch_probs = ibot_loss.softmax_center_teacher(t_patch_logits, values["teacher_temp"])
        dino_loss.update_center(t_cls_logits)
        ibot_loss.update_center(t_patch_logits)

    s_cls, s_patch = _tokens(student["backbone"], data["global_crops"])
    s_local_cls, _ = _tokens(student["backbone"], data["local_crops"])
    s_global_logits = student["dino_head"](s_cls)
    s_local_logits = student["dino_head"](s_local_cls)
    s_patch_logits = student["dino_head"](s_patch.flatten(0, 1)[data["mask_indices"]])

    loss_dino = dino_loss(
        list(s_global_logits.chunk(2)) + list(s_local_logits.chunk(n_local)), list(t_cls_probs.chunk(2))
    )
    loss_koleo = 0.1 * sum(koleo(c) for c in s_cls.chunk(2))
    loss_ibot = ibot_loss.forward_masked(
        s_patch_logits, t_patch_probs, data["masks"], data["n_masked_patches"], data["masks_weight"]
    )
    total = loss_dino + loss_koleo + loss_ibot
    assert torch.isfinite(total)
    assert loss_dino.item() > 0
    # iBOT wiring: recompute the loss crop by crop from the boolean masks (formula of
    # ultradino_monai.ssl.ibot_patch_loss; about half the crops are masked), taking each crop's student
    # patches by its own mask and the teacher targets in crop-major order. A collate whose mask_indices,
    # masks_weight or n_masked_patches disagree with its masks, or a loss averaged over the wrong axis, differs.
    masks = data["masks"]
    assert masks.shape == (2 * batch, s_patch.shape[1]) and masks.any()
    per_crop, offset = [], 0
    with torch.no_grad():
        for crop in range(masks.shape[0]):
            count = int(masks[crop].sum())
            if count == 0:  # an unmasked crop adds nothing but still counts in the 1 / n_crops
                per_crop.append(torch.zeros(()))
                continue
            logits = student["dino_head"](s_patch[crop][masks[crop]])
            targets = t_patch_probs[offset : offset + count]
            cross_entropy = -(targets * torch.log_softmax(logits / ibot_loss.student_temp, dim=-1)).sum(dim=-1)
            per_crop.append(cross_entropy.mean())
            offset += count
    assert offset == int(data["n_masked_patches"])
    torch.testing.assert_close(loss_ibot.detach(), torch.stack(per_crop).mean())
    total.backward()
    last_layer_before = student["dino_head"].last_layer.parametrizations.weight.original1.clone()
    optimizer.step()
    # Iteration 1 is inside freeze_last_layer_epochs: the prototypes do not move.
    torch.testing.assert_close(student["dino_head"].last_layer.parametrizations.weight.original1, last_layer_before)
    before = teacher["dino_head"].mlp[0].weight.clone()
    update_ema(teacher, student, values["momentum"])
    assert not torch.equal(teacher["dino_head"].mlp[0].weight, before)
