"""What a result record says about where a run came from: split file, backbone name, method family.

Shared by the segmentation and classification bundles (and the nnU-Net baseline's records), so
the two engines name the same backbone and the same checkpoint source the same way in Table 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ultradino_monai.data.datalist import read_datalist
from ultradino_monai.utils.files import sha256_file

__all__ = ["METHOD_NAMES", "backbone_name", "split_info"]


#: Table 1 row family per checkpoint source (docs/paper.md).
METHOD_NAMES = {
    "ultradino": "UltraDINO",
    "dinov2": "DINOv2",
    "ibot": "iBOT",
    "usfm": "USFM",
    "timm": "timm",
    "scratch": "scratch",
}


def backbone_name(
    arch: str | None, embed_dim: int | str, depth: int | str, patch_size: int | str, family: str | None = None
) -> str:
    """Short backbone name for result records: ``<arch>_patch<P>``, e.g. ``vit_small_patch16``.

    A backbone that is no canonical arch (``arch`` ``None`` or ``"custom"``, e.g. the demo's 6-block
    ViT-tiny) is named by its size: ``custom_d<D>x<depth>``. ``family`` (``"vit"`` / ``"beit"``) is
    put in front when the arch name does not start with it: the segmentation records name the family
    (``vit_custom_d192x6_patch16``, ``beit_usfm_patch16``), the classification records do not
    (``custom_d192x6_patch16``, ``usfm_patch16``).
    """
    if arch in (None, "", "custom"):
        arch = f"custom_d{embed_dim}x{depth}"
    if family and not arch.startswith(family):
        arch = f"{family}_{arch}"
    return f"{arch}_patch{patch_size}"


def split_info(split_file: str | os.PathLike) -> dict[str, Any]:
    """Provenance of a split file for result records: path, sha256, kind/seed/draw when present."""
    document = read_datalist(split_file)
    split = document.get("split") if isinstance(document.get("split"), Mapping) else {}
    return {
        "path": str(split_file),
        "sha256": sha256_file(split_file),
        "kind": split.get("kind", "datalist"),
        "dataset": split.get("dataset"),
        "seed": split.get("seed"),
        "draw": split.get("draw"),
    }
