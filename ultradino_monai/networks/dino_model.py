"""Backbone + DINO/iBOT head: the student and the teacher of DINOv2 pretraining.

Parameter names follow DINOv2's ``{student,teacher}.{backbone,dino_head}.*`` layout, so a
checkpoint's ``student``/``teacher`` entries map 1:1 onto the official training
checkpoints (docs/recipe.md §1.3 item 6). The iBOT loss shares the DINO head (docs/recipe.md §2.2,
``separate_head: false``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DinoModel"]


class DinoModel(nn.Module):
    """A ViT backbone followed by the shared DINO/iBOT projection head.

    Args:
        backbone: a :class:`~ultradino_monai.networks.vit.DinoVisionTransformer` (or any module
            with ``forward_features(x, masks=None)`` returning ``x_norm_clstoken`` [B,D] and
            ``x_norm_patchtokens`` [B,N,D]).
        dino_head: a :class:`~ultradino_monai.networks.heads.DINOHead` mapping [*,D] to [*,K] logits.
    """

    def __init__(self, backbone: nn.Module, dino_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Embed the crops and project CLS tokens and the selected patch tokens through the head.

        Args:
            global_crops: [G,C,Hg,Wg] global crops (view-major).
            local_crops: [L,C,Hl,Wl] local crops, or None (the teacher sees global crops only).
            masks: [G,N] bool; masked patches are replaced by the mask token (student only).
            mask_indices: [M] flat indices into the G×N patch tokens whose logits are wanted.

        Returns:
            ``global_cls`` [G,D], ``local_cls`` [L,D], ``global_logits`` [G,K],
            ``local_logits`` [L,K] and ``patch_logits`` [M,K] (empty tensors where not requested).
        """
        global_features = self.backbone.forward_features(global_crops, masks=masks)
        global_cls = global_features["x_norm_clstoken"]
        tokens = [global_cls]
        if local_crops is not None and local_crops.numel() > 0:
            local_cls = self.backbone.forward_features(local_crops)["x_norm_clstoken"]
        else:
            local_cls = global_cls.new_zeros((0, global_cls.shape[-1]))
        tokens.append(local_cls)
        if mask_indices is not None and mask_indices.numel() > 0:
            patch_tokens = global_features["x_norm_patchtokens"].flatten(0, 1)
            masked_patch_tokens = torch.index_select(patch_tokens, 0, mask_indices)
        else:
            masked_patch_tokens = global_cls.new_zeros((0, global_cls.shape[-1]))
        tokens.append(masked_patch_tokens)
        # one head pass over all tokens, like DINOv2's concatenated head input
        logits = self.dino_head(torch.cat(tokens))
        n_global, n_local = global_cls.shape[0], local_cls.shape[0]
        return {
            "global_cls": global_cls,
            "local_cls": local_cls,
            "global_logits": logits[:n_global],
            "local_logits": logits[n_global : n_global + n_local],
            "patch_logits": logits[n_global + n_local :],
        }
