"""THE shared deterministic preprocessing for 2D ultrasound images and label maps.

docs/design.md contract 2 ("One preprocessing"): the bundles, the linear probe, the
nnU-Net export and the metric all build their input pipeline from this module,
so a baseline never sees different pixels than the foundation model.

The chain, per sample (dictionary keys ``image`` / ``label`` by default)::

    LoadUltrasoundImaged     file (.png / any Pillow 2D format / .npy) or array
                             -> MetaTensor [C, H, W], source dtype kept
                             (H = image rows, W = image columns: NOT transposed)
    ScaleIntensityByDtyped   image only: uint8 / 255, uint16 / 65535 -> float32 in [0, 1]
    ToSingleChanneld         image only: [C, H, W] -> [1, H, W] (grey, R=G=B, BT.601 luminance)
    CheckSpatialShapesd      image and label map must have the same H x W
    AntialiasedResized       -> the network grid: bilinear + antialias for images,
                             nearest-exact for label maps
    CastToTyped              label map -> int64 (only values present in the file)
    RepeatChanneld           only when in_chans == 3: grey repeated to 3 channels
    NormalizeIntensityd      (x - mean) / std with FUS or ImageNet statistics

Modules, grouped as MONAI groups its transforms:

* :mod:`~ultradino_monai.transforms.ultrasound.array`: the array transforms (load, scale by
  dtype, reduce to grey, antialiased resize);
* :mod:`~ultradino_monai.transforms.ultrasound.dictionary`: their dictionary versions and the
  image / label shape check;
* :mod:`~ultradino_monai.transforms.ultrasound.normalization`: FUS / ImageNet statistics and the
  normalising tail of the chain;
* :mod:`~ultradino_monai.transforms.ultrasound.preprocessing`: the whole chain
  (:func:`ultrasound_preprocessing`) and its image half for in-memory arrays.
"""

from ultradino_monai.transforms.ultrasound.array import (
    BT601_WEIGHTS,
    AntialiasedResize,
    LoadUltrasoundImage,
    ScaleIntensityByDtype,
    ToSingleChannel,
)
from ultradino_monai.transforms.ultrasound.dictionary import (
    AntialiasedResized,
    CheckSpatialShapesd,
    LoadUltrasoundImaged,
    ScaleIntensityByDtyped,
    ToSingleChanneld,
)
from ultradino_monai.transforms.ultrasound.normalization import (
    FUS_MEAN,
    FUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    normalization_stats,
    normalization_transforms,
)
from ultradino_monai.transforms.ultrasound.preprocessing import preprocess_image_array, ultrasound_preprocessing

__all__ = [
    "FUS_MEAN",
    "FUS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BT601_WEIGHTS",
    "NORMALIZATIONS",
    "normalization_stats",
    "LoadUltrasoundImage",
    "LoadUltrasoundImaged",
    "ScaleIntensityByDtype",
    "ScaleIntensityByDtyped",
    "ToSingleChannel",
    "ToSingleChanneld",
    "AntialiasedResize",
    "AntialiasedResized",
    "CheckSpatialShapesd",
    "normalization_transforms",
    "ultrasound_preprocessing",
    "preprocess_image_array",
]
