"""Normalisation statistics of the ultrasound backbones and the normalising tail of the chain.

* FUS mean/std 0.1842924807 / 0.2187705424 on the [0, 1] scale, computed on the
  FUS13M training set (docs/recipe.md §1.3 item 2; UltraDINO ``dinov2/data/transforms.py``).
* ImageNet mean/std (timm's ``IMAGENET_DEFAULT_*``) for 3-channel natural-image
  backbones; the grey channel is repeated 3x first (docs/recipe.md §1.4 input, §1.5
  ``GrayToThreeChannels``).
"""

from __future__ import annotations

from monai.transforms import NormalizeIntensityd, RepeatChanneld

# docs/recipe.md §1.3 item 2: FUS13M training-set statistics on the [0, 1] scale (UltraDINO dinov2/data/transforms.py).
FUS_MEAN = 0.1842924807
FUS_STD = 0.2187705424
# timm IMAGENET_DEFAULT_MEAN / STD, used by the natural-image baselines (docs/recipe.md §1.4, §1.5).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


NORMALIZATIONS = ("fus", "imagenet", "none")


def normalization_stats(name: str, in_chans: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (one value per channel, [0, 1] intensity scale) for a normalisation name.

    Args:
        name: ``"fus"`` (FUS13M statistics, any channel count: the grey statistic is
            repeated), ``"imagenet"`` (needs ``in_chans == 3``) or ``"none"``
            (mean 0, std 1: the identity, pixels stay in [0, 1]).
        in_chans: number of channels the backbone takes (1 or 3).

    Returns:
        ``(mean, std)``, two tuples of length ``in_chans``.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for ultrasound backbones, got {in_chans}")
    key = str(name).lower()
    if key == "fus":
        return (FUS_MEAN,) * in_chans, (FUS_STD,) * in_chans
    if key == "imagenet":
        if in_chans != 3:
            raise ValueError(
                "normalization='imagenet' is for 3-channel natural-image backbones; "
                f"got in_chans={in_chans}. Use in_chans=3 (grey is repeated) or normalization='fus'."
            )
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    if key == "none":
        return (0.0,) * in_chans, (1.0,) * in_chans
    raise ValueError(f"unknown normalization {name!r}; expected one of {NORMALIZATIONS}")


def normalization_transforms(image_key: str = "image", normalization: str = "fus", in_chans: int = 1) -> list:
    """The tail of the chain: grey -> ``in_chans`` channels, then ``(x - mean) / std``.

    Input ``[1, H, W]`` float in [0, 1]; output ``[in_chans, H, W]`` float32 with
    per-channel ``(x - mean_c) / std_c`` (see :func:`normalization_stats`). With
    ``normalization="none"`` no normalisation transform is added (pixels stay in [0, 1]).
    """
    mean, std = normalization_stats(normalization, in_chans)
    transforms: list = []
    if in_chans == 3:
        transforms.append(RepeatChanneld(keys=image_key, repeats=3))
    if str(normalization).lower() != "none":
        transforms.append(
            NormalizeIntensityd(keys=image_key, subtrahend=list(mean), divisor=list(std), channel_wise=True)
        )
    return transforms
