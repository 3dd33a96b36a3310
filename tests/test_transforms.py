"""Tests of the shared ultrasound preprocessing (docs/design.md contract 2) and the supervised augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ultradino_monai.transforms.augment import (
    RandBrightnessContrast,
    RandGamma,
    RandGaussianNoiseVar,
    RandUltrasoundAffined,
    classification_augmentation,
    segmentation_augmentation,
    ultrasound_train_transforms,
)
from ultradino_monai.transforms.ultrasound import (
    FUS_MEAN,
    FUS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AntialiasedResize,
    AntialiasedResized,
    LoadUltrasoundImage,
    ScaleIntensityByDtype,
    ToSingleChannel,
    normalization_stats,
    preprocess_image_array,
    ultrasound_preprocessing,
)


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


def _load_scaled_grey(source, **kwargs):
    image = LoadUltrasoundImage(**kwargs)(source)
    return ToSingleChannel()(ScaleIntensityByDtype()(image))


# ------------------------------------------------------------------------------ loading / grey


def test_grayscale_png_orientation_and_dtype(tmp_path):
    array = np.zeros((5, 7), np.uint8)  # 5 rows, 7 columns
    array[1, 5] = 200
    image = LoadUltrasoundImage()(_save(tmp_path / "g.png", array))
    assert tuple(image.shape) == (1, 5, 7)  # [C, H, W], H = rows: not transposed
    assert image.dtype == torch.uint8
    assert int(image[0, 1, 5]) == 200 and int(image.sum()) == 200
    assert tuple(image.meta["spatial_shape"]) == (5, 7)
    assert image.meta["source_mode"] == "L"


def test_rgb_with_equal_channels_gives_that_channel_exactly(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (6, 9), dtype=np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    out = _load_scaled_grey(_save(tmp_path / "rgb.png", rgb))
    assert tuple(out.shape) == (1, 6, 9)
    assert torch.equal(out[0], torch.from_numpy(grey).float() / 255.0)


def test_coloured_rgb_uses_bt601_luminance(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (200, 100, 50)
    rgb[1, 2] = (0, 255, 0)
    rgb[0, 1] = (255, 255, 255)
    out = _load_scaled_grey(_save(tmp_path / "colour.png", rgb))
    expected_00 = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0  # 124.2 / 255
    assert float(out[0, 0, 0]) == pytest.approx(expected_00, abs=1e-6)
    assert float(out[0, 1, 2]) == pytest.approx(0.587, abs=1e-6)
    assert float(out[0, 0, 1]) == pytest.approx(1.0, abs=1e-6)
    assert float(out[0, 1, 0]) == 0.0


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 120
    rgba[..., 3] = 0  # fully transparent: alpha must not matter
    rgba[2, 3, :3] = (10, 20, 30)
    out = _load_scaled_grey(_save(tmp_path / "rgba.png", rgba))
    assert tuple(out.shape) == (1, 4, 4)
    assert float(out[0, 0, 0]) == pytest.approx(120 / 255.0, abs=1e-7)
    assert float(out[0, 2, 3]) == pytest.approx((0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255.0, abs=1e-6)


def test_palette_png_image_through_palette_label_keeps_indices(tmp_path):
    palette_img = Image.new("P", (5, 4))
    palette_img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255, 90, 90, 90])
    palette_img.putpixel((3, 1), 1)  # (x=3, y=1): row 1, column 3 -> red
    palette_img.putpixel((0, 2), 2)  # blue
    palette_img.putpixel((4, 3), 3)  # grey 90
    path = tmp_path / "pal.png"
    palette_img.save(path)
    assert Image.open(path).mode == "P"
    image = _load_scaled_grey(str(path))
    assert float(image[0, 1, 3]) == pytest.approx(0.299, abs=1e-6)
    assert float(image[0, 2, 0]) == pytest.approx(0.114, abs=1e-6)
    assert float(image[0, 3, 4]) == pytest.approx(90 / 255.0, abs=1e-6)
    label = LoadUltrasoundImage(as_label=True)(str(path))
    assert tuple(label.shape) == (1, 4, 5)
    assert int(label[0, 1, 3]) == 1 and int(label[0, 2, 0]) == 2 and int(label[0, 3, 4]) == 3
    assert sorted(torch.unique(label).tolist()) == [0, 1, 2, 3]


def test_16bit_png_scaled_by_65535(tmp_path):
    array = np.array([[0, 13107, 65535], [32768, 1, 65534]], dtype=np.uint16)
    path = _save(tmp_path / "g16.png", array)
    image = LoadUltrasoundImage()(path)
    assert image.dtype == torch.uint16 and tuple(image.shape) == (1, 2, 3)
    scaled = ScaleIntensityByDtype()(image)
    assert float(scaled[0, 0, 2]) == 1.0
    assert float(scaled[0, 0, 1]) == pytest.approx(0.2, abs=1e-7)
    assert float(scaled[0, 1, 0]) == pytest.approx(32768 / 65535, abs=1e-7)


def test_npy_inputs_and_channel_axis(tmp_path):
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "f.npy", grey)
    out = _load_scaled_grey(str(tmp_path / "f.npy"))
    assert torch.allclose(out[0], torch.from_numpy(grey))
    hwc = np.zeros((6, 5, 3), np.uint8)
    hwc[2, 4] = (255, 0, 0)
    np.save(tmp_path / "hwc.npy", hwc)
    image = LoadUltrasoundImage()(str(tmp_path / "hwc.npy"))
    assert tuple(image.shape) == (3, 6, 5) and int(image[0, 2, 4]) == 255
    chw = np.moveaxis(hwc, -1, 0).copy()
    assert torch.equal(LoadUltrasoundImage()(chw), image)
    ambiguous = np.zeros((3, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="channel_dim"):
        LoadUltrasoundImage()(ambiguous)
    assert tuple(LoadUltrasoundImage(channel_dim=-1)(ambiguous).shape) == (3, 3, 10)


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError):
        LoadUltrasoundImage()(str(tmp_path / "missing.png"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        LoadUltrasoundImage()(str(tmp_path / "notes.txt"))
    colour_mask = np.zeros((4, 4, 3), np.uint8)
    colour_mask[1, 1] = (255, 0, 0)
    with pytest.raises(ValueError, match="colour-coded label"):
        LoadUltrasoundImage(as_label=True)(_save(tmp_path / "cmask.png", colour_mask))
    with pytest.raises(ValueError, match="non-integer"):
        LoadUltrasoundImage(as_label=True)(np.full((4, 4), 0.5, np.float32))


# ------------------------------------------------------------------------------ intensity scaling


def test_scaling_by_dtype_not_per_image_minmax():
    image = torch.tensor([[[0, 51, 100, 255]]], dtype=torch.uint8)
    out = ScaleIntensityByDtype()(image)
    assert out.dtype == torch.float32
    assert out[0, 0].tolist() == [0.0, np.float32(0.2), np.float32(100 / 255), 1.0]
    dim = torch.tensor([[[10, 20]]], dtype=torch.uint8)  # a dark image stays dark (no min-max stretch)
    assert ScaleIntensityByDtype()(dim)[0, 0].tolist() == pytest.approx([10 / 255, 20 / 255])


def test_scaling_floats_ints_and_max_value():
    floats = torch.tensor([[[-0.5, 0.25, 1.5]]])
    assert ScaleIntensityByDtype()(floats)[0, 0].tolist() == [0.0, 0.25, 1.0]
    with pytest.raises(ValueError, match="outside"):
        ScaleIntensityByDtype(clip_float=False)(floats)
    twelve_bit = torch.tensor([[[0, 4095, 2048]]], dtype=torch.int16)
    with pytest.raises(ValueError, match="max_value"):
        ScaleIntensityByDtype()(twelve_bit)
    assert ScaleIntensityByDtype(max_value=4095)(twelve_bit)[0, 0].tolist() == pytest.approx([0.0, 1.0, 2048 / 4095])


# ------------------------------------------------------------------------------ resize


def test_antialiased_resize_matches_torch_and_keeps_borders():
    image = torch.rand(1, 60, 80)
    out = AntialiasedResize((24, 32))(image)
    ref = F.interpolate(image[None], size=(24, 32), mode="bilinear", antialias=True, align_corners=False)[0]
    assert torch.allclose(out, ref, atol=1e-6)
    ones = AntialiasedResize((24, 32))(torch.ones(1, 60, 80))
    assert torch.allclose(ones, torch.ones(1, 24, 32), atol=1e-6)  # no dark border (MONAI's Gaussian AA has one)


def test_label_nearest_resize_keeps_only_original_values_and_inverse():
    rng = np.random.default_rng(1)
    label = np.zeros((73, 91), np.uint8)
    label[10:40, 5:50] = 3
    label[45:70, 60:90] = 7
    label[rng.integers(0, 73, 50), rng.integers(0, 91, 50)] = 1
    loaded = LoadUltrasoundImage(as_label=True)(label)
    resizer = AntialiasedResized(keys="label", spatial_size=(32, 40), mode="nearest-exact")
    resized = resizer({"label": loaded})
    out = resized["label"]
    assert tuple(out.shape) == (1, 32, 40)
    values = torch.unique(out)
    assert torch.equal(values, torch.round(values))
    assert set(values.long().tolist()) <= {0, 1, 3, 7} and {0, 3, 7} <= set(values.long().tolist())
    restored = resizer.inverse(resized)
    assert tuple(restored["label"].shape[1:]) == (73, 91)


# ------------------------------------------------------------------------------ the chain


def _square_pair(tmp_path, height=300, width=200):
    """A bright rectangle over rows 20%-50% and columns 55%-90%, and its label (class 2)."""
    rows = slice(int(0.2 * height), int(0.5 * height))
    cols = slice(int(0.55 * width), int(0.9 * width))
    image = np.full((height, width), 20, np.uint8)
    image[rows, cols] = 250
    label = np.zeros((height, width), np.uint8)
    label[rows, cols] = 2
    return _save(tmp_path / "img.png", image), _save(tmp_path / "lab.png", label)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_chain_keeps_image_and_label_aligned(tmp_path):
    image_path, label_path = _square_pair(tmp_path)
    out = ultrasound_preprocessing(spatial_size=(224, 224), normalization="none")(
        {"image": image_path, "label": label_path}
    )
    image, label = out["image"], out["label"]
    assert tuple(image.shape) == (1, 224, 224) and image.dtype == torch.float32
    assert tuple(label.shape) == (1, 224, 224) and label.dtype == torch.int64
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert sorted(torch.unique(label).tolist()) == [0, 2]
    assert _iou(image[0] > 0.5, label[0] == 2) > 0.95
    # The square sits at rows 20%-50% and columns 55%-90% of the frame: not transposed.
    rows, cols = torch.nonzero(label[0] == 2, as_tuple=True)
    assert abs(float(rows.float().mean()) / 224 - 0.35) < 0.01
    assert abs(float(cols.float().mean()) / 224 - 0.725) < 0.01


def test_chain_rejects_mismatched_image_and_label(tmp_path):
    image_path = _save(tmp_path / "a.png", np.zeros((30, 40), np.uint8))
    label_path = _save(tmp_path / "b.png", np.zeros((40, 30), np.uint8))
    # MONAI's Compose re-raises as RuntimeError("applying transform ...") from our ValueError.
    with pytest.raises(RuntimeError) as info:
        ultrasound_preprocessing(spatial_size=(16, 16))({"image": image_path, "label": label_path})
    assert isinstance(info.value.__cause__, ValueError)
    assert "spatial shapes differ" in str(info.value.__cause__) and "b.png" in str(info.value.__cause__)


def test_fus_normalisation_numbers(tmp_path):
    array = np.zeros((32, 32), np.uint8)
    array[:, :16] = 51
    array[:, 16:] = 255
    path = _save(tmp_path / "n.png", array)
    out = ultrasound_preprocessing(label_key=None, spatial_size=(32, 32), normalization="fus")({"image": path})
    image = out["image"]
    assert float(image[0, 5, 3]) == pytest.approx((0.2 - FUS_MEAN) / FUS_STD, abs=1e-5)
    assert float(image[0, 5, 30]) == pytest.approx((1.0 - FUS_MEAN) / FUS_STD, abs=1e-5)
    direct = preprocess_image_array(array, spatial_size=(32, 32), normalization="fus")
    assert torch.allclose(direct, image.as_tensor(), atol=1e-6)


def test_imagenet_three_channel_path(tmp_path):
    array = np.full((20, 24), 51, np.uint8)
    path = _save(tmp_path / "i.png", array)
    out = ultrasound_preprocessing(label_key=None, spatial_size=(16, 16), normalization="imagenet", in_chans=3)(
        {"image": path}
    )["image"]
    assert tuple(out.shape) == (3, 16, 16)
    for c in range(3):
        assert torch.allclose(out[c], torch.full((16, 16), (0.2 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-5)
    fus3 = preprocess_image_array(array, spatial_size=(16, 16), normalization="fus", in_chans=3)
    assert tuple(fus3.shape) == (3, 16, 16) and torch.allclose(fus3[2], fus3[0])


def test_normalization_stats_and_errors():
    assert normalization_stats("fus", 1) == ((FUS_MEAN,), (FUS_STD,))
    assert normalization_stats("fus", 3) == ((FUS_MEAN,) * 3, (FUS_STD,) * 3)
    assert normalization_stats("imagenet", 3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_stats("none", 1) == ((0.0,), (1.0,))
    with pytest.raises(ValueError, match="in_chans=3"):
        normalization_stats("imagenet", 1)
    with pytest.raises(ValueError, match="unknown normalization"):
        normalization_stats("zscore", 1)


def test_none_normalisation_gives_unit_range_pixels(tmp_path):
    array = np.array([[0, 255], [51, 102]], np.uint8).repeat(8, 0).repeat(8, 1)
    out = ultrasound_preprocessing(label_key=None, spatial_size=(16, 16), normalization="none")(
        {"image": _save(tmp_path / "u.png", array)}
    )["image"]
    assert torch.allclose(out[0], torch.from_numpy(array).float() / 255.0, atol=1e-6)


# ------------------------------------------------------------------------------ augmentation


def test_brightness_contrast_and_gamma_formulas():
    image = torch.linspace(0, 1, 50).view(1, 5, 10)
    bc = RandBrightnessContrast(prob=1.0)
    bc.set_random_state(3)
    out = bc(image)
    assert 0.7 <= bc.alpha <= 1.3 and -0.3 <= bc.beta <= 0.3
    assert torch.allclose(out, (image * bc.alpha + bc.beta).clamp(0, 1), atol=1e-6)
    gamma = RandGamma(prob=1.0)
    gamma.set_random_state(4)
    out = gamma(image)
    assert 0.8 <= gamma.gamma <= 1.2
    assert torch.allclose(out, image**gamma.gamma, atol=1e-6)
    never = RandGamma(prob=0.0)
    assert torch.equal(never(image), image)


def test_gaussian_noise_variance_on_255_scale():
    noise = RandGaussianNoiseVar(prob=1.0)
    noise.set_random_state(0)
    image = torch.full((1, 128, 128), 0.5)
    out = noise(image)
    assert np.sqrt(10) / 255 <= noise.sigma <= np.sqrt(50) / 255
    assert float((out - image).std()) == pytest.approx(noise.sigma, rel=0.05)


def _square_dict():
    image = torch.zeros(1, 64, 64)
    image[0, 20:36, 24:44] = 1.0
    label = torch.zeros(1, 64, 64)
    label[0, 20:36, 24:44] = 3.0
    return {"image": image, "label": label}


def test_affine_moves_image_and_label_together():
    affine = RandUltrasoundAffined(keys=("image", "label"), prob=1.0, mode=("bilinear", "nearest"))
    for seed in range(5):
        affine.set_random_state(seed)
        out = affine(_square_dict())
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 3.0}
        assert _iou(out["image"][0] > 0.5, out["label"][0] == 3) > 0.8


def test_affine_repo_translate_is_a_fixed_positive_shift():
    affine = RandUltrasoundAffined(
        keys=("image", "label"),
        prob=1.0,
        scale_range=(1.0, 1.0),
        rotate=0.0,
        shear=0.0,
        translate_mode="repo",
        mode=("bilinear", "nearest"),
    )
    affine.set_random_state(0)
    out = affine(_square_dict())
    rows, cols = torch.nonzero(out["label"][0] == 3, as_tuple=True)
    # Square centre (27.5, 33.5) moves by +20% of the height (down) and of the width (right).
    assert float(rows.float().mean()) == pytest.approx(27.5 + 0.2 * 64, abs=0.6)
    assert float(cols.float().mean()) == pytest.approx(33.5 + 0.2 * 64, abs=0.6)


def test_segmentation_train_chain_is_joint_and_seeded(tmp_path):
    image_path, label_path = _square_pair(tmp_path, 96, 96)
    chain = ultrasound_train_transforms("segmentation", spatial_size=(64, 64), prob=1.0)
    outputs = []
    for seed in (7, 7, 8):
        chain.set_random_state(seed)
        outputs.append(chain({"image": image_path, "label": label_path}))
    first = outputs[0]
    assert tuple(first["image"].shape) == (1, 64, 64) and first["image"].dtype == torch.float32
    assert first["label"].dtype == torch.int64 and set(torch.unique(first["label"]).tolist()) <= {0, 2}
    assert torch.equal(first["image"], outputs[1]["image"]) and torch.equal(first["label"], outputs[1]["label"])
    assert not torch.equal(first["label"], outputs[2]["label"])
    # Without intensity changes the geometry still matches: compare with intensity transforms disabled.
    geometric = segmentation_augmentation(("image", "label"), prob=1.0)
    geometric.transforms = [
        t
        for t in geometric.transforms
        if "Rand" in type(t).__name__
        and ("Affine" in type(t).__name__ or "Flip" in type(t).__name__ or "Grid" in type(t).__name__)
    ]
    pre = ultrasound_preprocessing(spatial_size=(64, 64), normalization="none")(
        {"image": image_path, "label": label_path}
    )
    for seed in range(4):
        geometric.set_random_state(seed)
        out = geometric(dict(pre))
        assert _iou(out["image"][0] > 0.5, out["label"][0] == 2) > 0.8


def test_classification_train_chain_leaves_class_label_alone(tmp_path):
    image_path, _ = _square_pair(tmp_path, 48, 40)
    chain = ultrasound_train_transforms("classification", spatial_size=(32, 32), normalization="imagenet", in_chans=3)
    for seed in range(6):
        chain.set_random_state(seed)
        out = chain({"image": image_path, "label": 4})
        assert out["label"] == 4 and type(out["label"]) is int
        assert tuple(out["image"].shape) == (3, 32, 32)
    assert len(classification_augmentation().transforms) == 5
