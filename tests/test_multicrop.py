"""Tests of the DINOv2 / UltraDINO multi-crop (docs/recipe.md §1.3 item 3, §2.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism

from ultradino_monai.transforms.multicrop import DinoMultiCrop, DinoMultiCropd
from ultradino_monai.transforms.ultrasound import FUS_MEAN, FUS_STD
from ultradino_monai.transforms.view_render import render_views, resize_taps

H, W = 120, 160  # small 4:3 frames keep the tests fast


def _image(seed: int = 0, height: int = H, width: int = W) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (1, height, width), dtype=np.uint8))


def _small(**kwargs) -> DinoMultiCrop:
    defaults = dict(global_size=48, local_size=24, n_local_crops=4)
    defaults.update(kwargs)
    return DinoMultiCrop(**defaults)


def _torchvision_view(source: torch.Tensor, p, flip: str, mean: float, std: float) -> torch.Tensor:
    """The same view built from torchvision's functional ops, from the drawn parameters."""
    top, left, h, w = p.box
    x = F.interpolate(
        source[None, :, top : top + h, left : left + w],
        size=(p.size, p.size),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )[0].clamp(0, 1)
    if p.flip:
        x = TF.vertical_flip(x) if flip == "vertical" else TF.horizontal_flip(x)
    if p.jitter is not None:
        brightness, contrast, brightness_first = p.jitter
        for op in ("b", "c") if brightness_first else ("c", "b"):
            x = TF.adjust_brightness(x, brightness) if op == "b" else TF.adjust_contrast(x, contrast)
    if p.blur_sigma is not None:
        x = TF.gaussian_blur(x, [9, 9], [p.blur_sigma, p.blur_sigma])
    if p.solarize:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, [mean], [std])


def test_keys_shapes_dtypes_and_range():
    crops = DinoMultiCrop()(_image(0, 480, 640))  # the paper setting: 2 x 224 + 8 x 96
    assert list(crops) == ["global_0", "global_1"] + [f"local_{i}" for i in range(8)]
    lo, hi = (0 - FUS_MEAN) / FUS_STD, (1 - FUS_MEAN) / FUS_STD
    for name, view in crops.items():
        size = 224 if name.startswith("global") else 96
        assert tuple(view.shape) == (1, size, size) and view.dtype == torch.float32
        assert view.is_contiguous()
        assert lo - 1e-5 <= float(view.min()) and float(view.max()) <= hi + 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("flip", ["vertical", "horizontal"])
def test_views_match_torchvision_semantics(seed, flip):
    transform = _small(flip=flip, solarize_prob=0.5, blur_probabilities=(0.5, 0.9, 0.5))
    transform.set_random_state(seed)
    image = _image(seed)
    crops = transform(image)
    source = image.float() / 255
    kinds = {"flip": 0, "jitter": 0, "blur": 0}
    for p in transform.params:
        expected = _torchvision_view(source, p, flip, FUS_MEAN, FUS_STD)
        assert torch.allclose(crops[p.name], expected, atol=5e-5), p
        kinds["flip"] += p.flip
        kinds["jitter"] += p.jitter is not None
        kinds["blur"] += p.blur_sigma is not None
    assert all(count > 0 for count in kinds.values())  # each op was exercised in this draw


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("in_size,out_size", [(450, 224), (97, 96), (60, 96), (640, 24)])
def test_resize_taps_reproduce_torch_antialias(interpolation, in_size, out_size):
    index, weight = resize_taps(in_size, out_size, interpolation)
    signal = torch.rand(in_size, dtype=torch.float64)
    ours = (torch.from_numpy(weight.copy()) * signal[torch.from_numpy(index.copy())]).sum(1)
    ref = F.interpolate(
        signal.view(1, 1, 1, -1), size=(1, out_size), mode=interpolation, antialias=True, align_corners=False
    ).view(-1)
    assert torch.allclose(ours, ref, atol=1e-9)
    assert np.allclose(weight.sum(1), 1.0)


def test_render_views_uint8_scale_equals_float_input():
    image = _image(3)
    boxes = [(5, 7, 100, 120), (0, 0, H, W)]
    from_uint8 = render_views(image[0].float(), boxes, 32, value_scale=1 / 255)
    from_float = render_views(image[0].float() / 255, boxes, 32)
    assert torch.allclose(from_uint8, from_float, atol=1e-6)


def _full_frame(**kwargs) -> DinoMultiCrop:
    """Deterministic geometry: the crop is the whole frame, no colour ops."""
    return _small(
        global_scale=(1.0, 1.0),
        local_scale=(1.0, 1.0),
        ratio=(W / H, W / H),
        jitter_prob=0.0,
        blur_probabilities=(0.0, 0.0, 0.0),
        solarize_prob=0.0,
        **kwargs,
    )


def test_vertical_flip_flips_rows():
    image = torch.zeros(1, H, W, dtype=torch.uint8)
    image[0, :20] = 255  # bright top band
    never, always = _full_frame(flip_prob=0.0), _full_frame(flip_prob=1.0)
    never.set_random_state(0)
    always.set_random_state(0)
    upright, flipped = never(image), always(image)
    for name in upright:
        assert all(p.box == (0, 0, H, W) for p in always.params)
        assert torch.equal(flipped[name], upright[name].flip(-2))
        assert float(flipped[name][0, -1].mean()) > float(flipped[name][0, 0].mean())  # bright band now at the bottom
    horizontal = _full_frame(flip_prob=1.0, flip="horizontal")
    horizontal.set_random_state(0)
    assert torch.equal(horizontal(image)["global_0"], upright["global_0"].flip(-1))


def _frequencies(transform: DinoMultiCrop, draws: int) -> dict[str, np.ndarray]:
    counts = {"blur": [], "solarize": [], "jitter": [], "flip": []}
    for _ in range(draws):
        transform.randomize((480, 640))
        counts["blur"].append([p.blur_sigma is not None for p in transform.params])
        counts["solarize"].append([p.solarize for p in transform.params])
        counts["jitter"].append([p.jitter is not None for p in transform.params])
        counts["flip"].append([p.flip for p in transform.params])
    return {k: np.asarray(v, dtype=float).mean(0) for k, v in counts.items()}


def test_effective_and_nominal_blur_probabilities():
    effective = DinoMultiCrop()
    effective.set_random_state(0)
    freq = _frequencies(effective, 3000)
    assert freq["blur"][0] == 0.0  # global_0 is never blurred (dinov2 PR #411)
    assert freq["blur"][1] == pytest.approx(0.9, abs=0.02)
    assert freq["blur"][2:].mean() == pytest.approx(0.5, abs=0.02)
    assert freq["solarize"][1] == pytest.approx(0.2, abs=0.02)
    assert freq["solarize"][0] == 0.0 and freq["solarize"][2:].max() == 0.0  # solarize on global_1 only
    assert freq["jitter"].mean() == pytest.approx(0.8, abs=0.02)
    assert freq["flip"].mean() == pytest.approx(0.5, abs=0.02)
    nominal = DinoMultiCrop(blur_probabilities="nominal")
    nominal.set_random_state(0)
    freq = _frequencies(nominal, 3000)
    assert freq["blur"][0] == 1.0
    assert freq["blur"][1] == pytest.approx(0.1, abs=0.02)
    assert freq["blur"][2:].mean() == pytest.approx(0.5, abs=0.02)
    for p in nominal.params:
        if p.blur_sigma is not None:
            assert 0.1 <= p.blur_sigma <= 2.0


def test_solarize_only_changes_global_1():
    image = _image(5)
    plain, solar = _small(solarize_prob=0.0), _small(solarize_prob=1.0)
    plain.set_random_state(11)
    solar.set_random_state(11)
    a, b = plain(image), solar(image)
    assert [p.solarize for p in solar.params] == [False, True] + [False] * 4
    for name in a:
        if name != "global_1":
            assert torch.equal(a[name], b[name])
    x = a["global_1"] * FUS_STD + FUS_MEAN
    expected = (torch.where(x >= 128 / 255, 1 - x, x) - FUS_MEAN) / FUS_STD
    assert torch.allclose(b["global_1"], expected, atol=1e-5)
    assert not torch.allclose(a["global_1"], b["global_1"])


def test_same_seed_same_views_different_seed_different():
    image = _image(2)
    t = _small()
    t.set_random_state(123)
    first = t(image)
    t.set_random_state(123)
    again = t(image)
    t.set_random_state(124)
    other = t(image)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_dictionary_version_and_monai_dataloader_determinism():
    data = [{"image": _image(i), "patient": f"P{i}"} for i in range(4)]
    crop = DinoMultiCropd(keys="image", global_size=32, local_size=16, n_local_crops=2)
    out = crop(dict(data[0]))
    assert "image" not in out and out["patient"] == "P0"
    assert set(out) == {"patient", "global_0", "global_1", "local_0", "local_1"}
    kept = DinoMultiCropd(keys="image", keep_source=True, global_size=32, local_size=16, n_local_crops=2)(dict(data[0]))
    assert "image" in kept

    def run(seed: int) -> list[torch.Tensor]:
        set_determinism(seed)
        loader = DataLoader(Dataset(data, transform=crop), batch_size=2, num_workers=0)
        return [batch["global_1"] for batch in loader] + [batch["local_1"] for batch in loader]

    try:
        first, second, other = run(0), run(0), run(1)
    finally:
        set_determinism(None)
    assert first[0].shape == (2, 1, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_input_validation():
    with pytest.raises(ValueError, match="one grey channel"):
        _small()(torch.zeros(3, H, W, dtype=torch.uint8))
    with pytest.raises(ValueError, match="blur_probabilities"):
        DinoMultiCrop(blur_probabilities="sometimes")
    with pytest.raises(ValueError, match="flip"):
        DinoMultiCrop(flip="diagonal")
    float_input = _image(4).float() / 255
    t = _small()
    t.set_random_state(0)
    a = t(float_input)
    t.set_random_state(0)
    b = t(_image(4)[0].numpy())  # [H, W] uint8 numpy works too
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
