"""Networks: the DINOv2-style ViT backbone and the checkpoint loaders."""

from ultradino_monai.networks.checkpoints import (
    FUS_MEAN,
    FUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOURCES,
    CheckpointError,
    LoadedBackbone,
    load_backbone,
    save_backbone,
    sidecar_path,
)
from ultradino_monai.networks.vit import ARCHS, BeitBackbone, DinoVisionTransformer, build_vit

__all__ = [
    "ARCHS",
    "BeitBackbone",
    "CheckpointError",
    "DinoVisionTransformer",
    "FUS_MEAN",
    "FUS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedBackbone",
    "SOURCES",
    "build_vit",
    "load_backbone",
    "save_backbone",
    "sidecar_path",
]
