"""Array transforms of the ultrasound preprocessing: load, scale by dtype, reduce to grey, antialiased resize.

Each takes and returns one channel-first ``[C, H, W]`` image; the dictionary versions are in
:mod:`ultradino_monai.transforms.ultrasound.dictionary`. Intensity scaling is by the *dtype
range*, never per-image min-max, because a per-image rescale would hand different pixels to
the foundation model and to nnU-Net (and destroy the absolute brightness that sonographers read).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Resize, Transform
from monai.transforms.inverse import TraceableTransform
from monai.transforms.utils import scale_affine
from monai.utils import TraceKeys, convert_to_tensor, ensure_tuple_rep
from PIL import Image

logger = logging.getLogger(__name__)


# ITU-R BT.601 luma weights (the same ones Pillow's convert("L") uses).
BT601_WEIGHTS = (0.299, 0.587, 0.114)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")
_NPY_SUFFIXES = (".npy",)


def _channel_first(array: np.ndarray, channel_dim: int | None, source: str) -> np.ndarray:
    """[H, W] / [H, W, C] / [C, H, W] -> [C, H, W] (C <= 4), never transposing H and W."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ValueError(
            f"{source}: expected a 2D image of shape [H, W], [H, W, C] or [C, H, W]; got shape {array.shape}"
        )
    if channel_dim is None:
        first, last = array.shape[0] in (1, 2, 3, 4), array.shape[-1] in (1, 2, 3, 4)
        if first and not last:
            channel_dim = 0
        elif last and not first:
            channel_dim = -1
        else:
            raise ValueError(
                f"{source}: cannot tell the channel axis of an array of shape {array.shape}; "
                "pass channel_dim=0 ([C, H, W]) or channel_dim=-1 ([H, W, C])"
            )
    if channel_dim in (-1, 2):
        array = np.moveaxis(array, -1, 0)
    elif channel_dim != 0:
        raise ValueError(f"channel_dim must be None, 0 or -1, got {channel_dim}")
    if array.shape[0] > 4:
        raise ValueError(f"{source}: {array.shape[0]} channels; at most 4 (RGBA) are supported")
    return array


def _pil_to_array(img: Image.Image, as_label: bool, source: str) -> np.ndarray:
    """Pillow image -> [C, H, W] array in the source dtype (palette images resolved, see LoadUltrasoundImage)."""
    mode = img.mode
    if mode in ("P", "PA"):
        if as_label:
            # Index-valued masks are often stored as palette PNGs: the indices ARE the classes.
            return np.asarray(img.getchannel(0) if mode == "PA" else img)[None].copy()
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode == "1":
        arr = np.asarray(img)
        return (arr.astype(np.uint8) if as_label else arr.astype(np.uint8) * 255)[None]
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa", "RGBX"):
        img = img.convert("RGBA" if mode in ("La", "RGBa") else "RGB")
        mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)[None]  # native byte order
    if mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
            raise ValueError(f"{source}: 32-bit integer image with values outside [0, 65535] is not supported")
        return arr.astype(np.uint16)[None]
    if mode == "F":
        return np.asarray(img, dtype=np.float32)[None].copy()
    if mode in ("L", "LA", "RGB", "RGBA"):
        return _channel_first(np.asarray(img).copy(), -1 if mode != "L" else None, source)
    raise ValueError(f"{source}: unsupported Pillow image mode {mode!r}")


def _label_to_single_channel(array: np.ndarray, source: str) -> np.ndarray:
    """Check a label map is index-valued and single-channel; returns [1, H, W]."""
    if array.shape[0] == 2:  # grey + alpha
        array = array[:1]
    elif array.shape[0] in (3, 4):
        rgb = array[:3]
        if not (np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2])):
            raise ValueError(
                f"{source}: colour-coded label map (RGB channels differ). Convert it to an index-valued "
                "single-channel PNG (one integer class id per pixel) before use."
            )
        array = rgb[:1]
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{source}: label map must hold integer class ids; found non-integer floats")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{source}: label map dtype {array.dtype} is not an integer type")
    return np.ascontiguousarray(array)


class LoadUltrasoundImage(Transform):
    """Load one 2D ultrasound image or label map as a channel-first MetaTensor.

    Accepts a path to a PNG (or any 2D format Pillow reads: JPEG, BMP, TIFF, ...), a
    path to a ``.npy`` file, the encoded bytes of such an image (a webdataset shard member),
    or an in-memory ``numpy.ndarray`` / ``torch.Tensor``.

    Orientation: the output is ``[C, H, W]`` with ``H`` = image rows (top to bottom) and
    ``W`` = columns (left to right), exactly as ``numpy.asarray(PIL.Image.open(path))``
    lays them out. MONAI's ``PILReader`` transposes to ``[W, H]`` by default; this loader
    does not, so an image and its label PNG stay aligned pixel for pixel and
    ``image[0, r, c]`` is the pixel at row ``r``, column ``c`` of the file.

    Image modes (``as_label=False``), source dtype kept (no scaling here):

    * ``L`` -> ``[1, H, W]`` uint8; ``LA`` -> ``[2, H, W]`` (grey + alpha);
    * ``RGB`` -> ``[3, H, W]``; ``RGBA`` -> ``[4, H, W]``;
    * ``P`` / ``PA`` (palette) -> converted through the palette to RGB (RGBA if the
      palette has transparency) first;
    * ``1`` (bilevel) -> uint8 0/255; ``I;16*`` -> uint16; ``I`` (32-bit) -> uint16 when
      the values fit in [0, 65535]; ``F`` -> float32; CMYK / YCbCr / LAB / HSV -> RGB.

    Label maps (``as_label=True``) must be index-valued: palette PNGs keep their raw
    indices (the indices are the class ids, the palette colours are ignored); grey and
    R=G=B images give that channel; an alpha channel is dropped; a colour-coded RGB mask
    raises ``ValueError``. The output is ``[1, H, W]`` in an integer dtype.

    ``.npy`` and in-memory arrays: ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` with C <= 4.
    The channel axis is inferred when unambiguous, otherwise pass ``channel_dim``.

    Meta data: ``filename_or_obj``, ``spatial_shape`` (original ``(H, W)``),
    ``original_channel_dim`` (0, the output layout), ``source_mode`` (Pillow mode or
    ``"ndarray"``) and ``source_dtype``.

    Args:
        as_label: load as an index-valued label map (see above).
        channel_dim: channel axis of ``.npy`` / array inputs: ``None`` (infer), ``0`` or ``-1``.
    """

    def __init__(self, as_label: bool = False, channel_dim: int | None = None) -> None:
        self.as_label = bool(as_label)
        self.channel_dim = channel_dim

    def _read(self, source: Any) -> tuple[np.ndarray, str, str]:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"ultrasound image file not found: {path}")
            suffix = path.suffix.lower()
            if suffix in _NPY_SUFFIXES:
                try:
                    array = np.load(path, allow_pickle=False)
                except ValueError as err:
                    raise ValueError(f"{path}: not a plain numeric .npy array ({err})") from err
                return _channel_first(np.asarray(array), self.channel_dim, str(path)), "ndarray", str(path)
            if suffix not in _IMAGE_SUFFIXES:
                raise ValueError(
                    f"{path}: unsupported file type {suffix!r}; expected one of {_IMAGE_SUFFIXES + _NPY_SUFFIXES}"
                )
            try:
                with Image.open(path) as img:
                    img.load()
                    if getattr(img, "n_frames", 1) > 1:
                        logger.warning("%s has %d frames; only the first is used", path, img.n_frames)
                    mode = img.mode
                    array = _pil_to_array(img, self.as_label, str(path))
            except OSError as err:
                raise ValueError(f"{path}: Pillow cannot read this image ({err})") from err
            return array, mode, str(path)
        if isinstance(source, (bytes, bytearray, memoryview)):  # an encoded file, e.g. a PNG from a tar shard
            try:
                with Image.open(io.BytesIO(source)) as img:
                    img.load()
                    return _pil_to_array(img, self.as_label, "bytes"), img.mode, "bytes"
            except OSError as err:
                raise ValueError(f"Pillow cannot read these {len(source)} image bytes ({err})") from err
        if isinstance(source, torch.Tensor):
            source = source.detach().cpu().numpy()
        if isinstance(source, np.ndarray):
            return _channel_first(source, self.channel_dim, "array"), "ndarray", "array"
        raise TypeError(f"expected a file path, numpy array or torch tensor; got {type(source).__name__}")

    def __call__(self, source: str | Path | bytes | np.ndarray | torch.Tensor) -> MetaTensor:
        """Returns a MetaTensor ``[C, H, W]`` (labels ``[1, H, W]``) in the source dtype."""
        array, mode, name = self._read(source)
        if self.as_label:
            array = _label_to_single_channel(array, name)
        elif array.dtype.kind == "b":
            array = array.astype(np.uint8) * 255
        source_dtype = str(array.dtype)
        meta = {
            "filename_or_obj": name,
            "spatial_shape": np.asarray(array.shape[1:]),
            "original_channel_dim": 0,
            "source_mode": mode,
            "source_dtype": source_dtype,
        }
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta=meta)


class ScaleIntensityByDtype(Transform):
    """Scale intensities to float32 in [0, 1] by the range of the *dtype*, not of the image.

    * ``uint8``: ``x / 255`` (so 255 -> 1.0, 51 -> 0.2); ``uint16``: ``x / 65535``;
    * ``bool``: False/True -> 0.0/1.0;
    * float inputs are taken to be on the [0, 1] scale already. Values outside it are
      clipped to [0, 1] (``clip_float=True``, a warning is logged once per transform
      instance) or rejected with ``ValueError`` (``clip_float=False``);
    * other integer dtypes (int8/16/32/64, uint32/64) are ambiguous and need ``max_value``.

    ``max_value`` overrides the dtype range for integer inputs, e.g. ``4095`` for 12-bit
    DICOM frames stored in uint16; the result is clipped to [0, 1].

    Input ``[C, H, W]`` (any shape works), output the same shape, float32 in [0, 1].
    """

    def __init__(self, max_value: float | None = None, clip_float: bool = True) -> None:
        if max_value is not None and not max_value > 0:
            raise ValueError(f"max_value must be positive, got {max_value}")
        self.max_value = max_value
        self.clip_float = clip_float
        self._warned = False

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        dtype = img.dtype
        if dtype == torch.bool:
            return img.to(torch.float32)
        if dtype.is_floating_point:
            out = img.to(torch.float32)
            if out.numel() and (out.min() < 0 or out.max() > 1):
                if not self.clip_float:
                    raise ValueError(
                        f"float image values span [{float(out.min()):.4g}, {float(out.max()):.4g}], outside [0, 1]; "
                        "rescale to [0, 1] or store as uint8/uint16"
                    )
                if not self._warned:
                    logger.warning(
                        "float image values span [%.4g, %.4g]; clipping to [0, 1] (float inputs must be on the "
                        "[0, 1] scale)",
                        float(out.min()),
                        float(out.max()),
                    )
                    self._warned = True
                out = out.clamp(0.0, 1.0)
            return out
        if self.max_value is not None:
            return (img.to(torch.float32) / float(self.max_value)).clamp_(0.0, 1.0)
        if dtype == torch.uint8:
            return img.to(torch.float32) / 255.0
        if dtype == torch.uint16:
            return img.to(torch.float32) / 65535.0
        raise ValueError(
            f"cannot scale a {dtype} image by its dtype range (only uint8, uint16, bool and [0, 1] floats); "
            "pass max_value (e.g. 4095 for 12-bit data) or convert the data"
        )


class ToSingleChannel(Transform):
    """Reduce ``[C, H, W]`` to one grey channel ``[1, H, W]``.

    * C = 1: unchanged (grey).
    * C = 2: grey + alpha; the alpha channel is dropped.
    * C = 3 (RGB) or 4 (RGBA, alpha dropped): if R = G = B exactly (the usual case for
      ultrasound frames exported as RGB), that channel is returned bit for bit;
      otherwise ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` (the weights
      Pillow's ``convert("L")`` uses) for coloured overlays such as Doppler.

    Run it *after* :class:`ScaleIntensityByDtype` (as :func:`ultrasound_preprocessing`
    does): on float input the luminance is exact. Integer input keeps its dtype, the
    luminance being rounded to the nearest integer (as Pillow does).
    """

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim != 3:
            raise ValueError(f"expected a channel-first [C, H, W] image, got shape {tuple(img.shape)}")
        channels = img.shape[0]
        if channels == 1:
            return img
        if channels == 2:
            return img[:1]
        if channels not in (3, 4):
            raise ValueError(f"cannot reduce {channels} channels to grey (expected 1, 2, 3 or 4)")
        r, g, b = img[0:1], img[1:2], img[2:3]
        if torch.equal(r, g) and torch.equal(r, b):
            return r.clone()
        work = torch.float64 if not img.dtype.is_floating_point else img.dtype
        luma = r.to(work) * BT601_WEIGHTS[0] + g.to(work) * BT601_WEIGHTS[1] + b.to(work) * BT601_WEIGHTS[2]
        if not img.dtype.is_floating_point:
            luma = luma.round_()
        return luma.to(img.dtype)


class AntialiasedResize(Resize):
    """Resize a ``[C, H, W]`` image to ``spatial_size`` with PyTorch's antialiased kernels.

    ``mode="bilinear"`` (or ``"bicubic"``) uses ``torch.nn.functional.interpolate(...,
    antialias=True, align_corners=False)``: when downsampling, the interpolation kernel is
    widened by the scale factor (the Pillow / torchvision ``antialias`` filter), so no
    aliasing; when upsampling it is plain bilinear. MONAI's own ``Resize(anti_aliasing=True)``
    pre-smooths with a zero-padded Gaussian, which darkens the image border, hence this class.

    ``mode="nearest-exact"`` is the one to use for label maps: it picks the source pixel
    whose centre is nearest (the same pixel-centre convention as the bilinear path, unlike
    ``"nearest"`` which is shifted by half a pixel), so labels keep only their original
    values and stay aligned with the image.

    Subclasses MONAI ``Resize`` for the meta-data tracking: the affine is updated and the
    operation is recorded, so ``inverse`` (and ``monai.transforms.Invertd``) resizes a
    prediction back to the original ``(H, W)``.

    Output: float32 ``[C, *spatial_size]`` (integer inputs are interpolated as float32;
    cast label maps back to an integer dtype afterwards).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int,
        mode: str = "bilinear",
        antialias: bool = True,
    ) -> None:
        super().__init__(spatial_size=spatial_size, mode=mode, align_corners=None, dtype=torch.float32)
        if mode not in ("bilinear", "bicubic", "nearest-exact", "nearest", "area"):
            raise ValueError(f"unsupported resize mode {mode!r}")
        self.antialias = antialias

    def __call__(self, img: torch.Tensor, mode: str | None = None, **_: Any) -> torch.Tensor:  # type: ignore[override]
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim != 3:
            raise ValueError(f"expected a channel-first [C, H, W] image, got shape {tuple(img.shape)}")
        mode = self.mode if mode is None else mode
        out_size = tuple(int(s) for s in ensure_tuple_rep(self.spatial_size, 2))
        orig_size = tuple(int(s) for s in img.shape[1:])
        align_corners = False if mode in ("bilinear", "bicubic") else None
        extra_info = {
            "mode": mode,
            "align_corners": align_corners if align_corners is not None else TraceKeys.NONE,
            "dtype": "float32",
            "new_dim": 0,
        }
        meta_info = TraceableTransform.track_transform_meta(
            img,
            sp_size=out_size,
            affine=scale_affine(orig_size, out_size, align_corners=bool(align_corners)),
            extra_info=extra_info,
            orig_size=orig_size,
            transform_info=self.get_transform_info(),
            lazy=False,
        )
        data = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        if orig_size != out_size:
            use_aa = self.antialias and mode in ("bilinear", "bicubic")
            data = F.interpolate(data[None], size=out_size, mode=mode, align_corners=align_corners, antialias=use_aa)[0]
        else:
            data = data.clone()
        if isinstance(img, MetaTensor):
            out = MetaTensor(data)
            return out.copy_meta_from(meta_info)
        return data
