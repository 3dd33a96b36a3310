"""Embeddings and attention maps of a pretrained backbone for a datalist (pretrain ``inference.json``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor
from torch import nn

from ultradino_monai.data.datalist import load_datalist
from ultradino_monai.evaluation.attention import cls_attention_maps, save_attention_overlay
from ultradino_monai.utils.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["write_embeddings", "write_attention_overlays"]


@torch.no_grad()
def write_embeddings(
    backbone: nn.Module,
    datalist: str | os.PathLike,
    section: str,
    preprocessing,
    output_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> str:
    """Embed every image of a datalist section and save ``cls``/``avgpool``/``registers`` to an npz.

    The npz holds ``cls`` [N,D], ``avgpool`` [N,D] (mean patch token, registers excluded),
    ``registers`` [N,R,D], ``image`` [N] (paths as given in the datalist) and, when the
    items carry integer labels, ``label`` [N].
    """
    from tqdm import tqdm

    items = load_datalist(datalist, section)
    if not items:
        raise ValueError(f"{datalist}: section {section!r} is empty")
    loader = DataLoader(Dataset(items, transform=preprocessing), batch_size=batch_size, shuffle=False)
    backbone = backbone.to(device).eval()
    cls, pooled, registers = [], [], []
    for batch in tqdm(loader, desc="embedding", unit="batch"):
        features = backbone.forward_features(convert_to_tensor(batch["image"], track_meta=False).to(device))
        cls.append(features["x_norm_clstoken"].float().cpu())
        pooled.append(features["x_norm_patchtokens"].float().mean(dim=1).cpu())
        registers.append(features["x_norm_regtokens"].float().cpu())
    arrays = {
        "cls": torch.cat(cls).numpy(),
        "avgpool": torch.cat(pooled).numpy(),
        "registers": torch.cat(registers).numpy(),
        "image": np.array([os.path.relpath(item["image"], Path(datalist).parent) for item in items]),
    }
    if all(isinstance(item.get("label"), int) for item in items):
        arrays["label"] = np.array([item["label"] for item in items], dtype=np.int64)

    def write(temporary: Path) -> None:
        # np.savez_compressed appends ".npz" to a file *name* without it, so it gets an open file
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, **arrays)

    output_path = atomic_write(output_path, write)
    logger.info("wrote %d embeddings to %s", len(items), output_path)
    return str(output_path)


@torch.no_grad()
def write_attention_overlays(
    backbone: nn.Module,
    datalist: str | os.PathLike,
    section: str,
    preprocessing,
    output_dir: str | os.PathLike,
    num_images: int = 8,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Save last-block CLS→patch attention overlays (one PNG per image, one panel per head)."""
    items = load_datalist(datalist, section)[:num_images]
    backbone = backbone.to(device).eval()
    written = []
    for index, item in enumerate(items):
        sample = preprocessing(dict(item))
        image = convert_to_tensor(sample["image"], track_meta=False)[None].to(device)
        maps = cls_attention_maps(backbone, image)[0].cpu().numpy()
        name = Path(item["image"]).stem
        path = Path(output_dir) / f"{index:03d}_{name}.png"
        save_attention_overlay(image[0, 0].cpu().numpy(), maps, path, title=name)
        written.append(str(path))
    logger.info("wrote %d attention overlays to %s", len(written), output_dir)
    return written
