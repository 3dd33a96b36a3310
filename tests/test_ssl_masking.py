"""iBOT block masks and the multi-crop collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ultradino_monai.ssl import MaskingGenerator, MultiCropMaskCollate, collate_multicrop_with_masks


class RecordingMaskingGenerator(MaskingGenerator):
    """The real generator, also remembering the requested targets and the masks it returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, np.ndarray]] = []

    def __call__(self, num_masking_patches, rng):
        mask = super().__call__(num_masking_patches, rng)
        self.calls.append((num_masking_patches, mask.copy()))
        return mask


def _samples(batch: int, n_local: int = 2, global_size: int = 32, local_size: int = 16):
    """B multi-crop samples; each crop is filled with a value that identifies (view, sample).

    global_g of sample b holds ``100 g + b``; local_v holds ``1000 + 100 v + b``.
    """
    samples = []
    for b in range(batch):
        sample = {f"global_{g}": torch.full((1, global_size, global_size), 100.0 * g + b) for g in range(2)}
        for v in range(n_local):
            sample[f"local_{v}"] = torch.full((1, local_size, local_size), 1000.0 + 100.0 * v + b)
        sample["index"] = b  # extra keys are ignored
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------- block generator


def test_generator_count_never_exceeds_target_and_is_close():
    gen = MaskingGenerator((14, 14))
    assert gen.max_num_patches == 98
    rng = np.random.default_rng(0)
    for target in (0, 4, 19, 39, 58, 78, 98):
        counts = np.array([gen(target, rng).sum() for _ in range(30)])
        assert (counts <= target).all()
        assert counts.mean() >= 0.9 * target
    assert gen(0, rng).sum() == 0


def test_generator_is_seeded():
    gen = MaskingGenerator((14, 14))
    a = [gen(50, np.random.default_rng(7)) for _ in range(3)]
    b = [gen(50, np.random.default_rng(7)) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    rng = np.random.default_rng(7)
    assert not np.array_equal(gen(50, rng), gen(50, rng))
    with pytest.raises(TypeError, match="Generator"):
        gen(50, None)


def test_single_block_respects_cap_and_is_a_rectangle():
    gen = MaskingGenerator((14, 14), max_num_patches=10)
    rng = np.random.default_rng(1)
    for _ in range(200):
        mask = np.zeros((14, 14), dtype=bool)
        added = gen.add_block(mask, max_new_patches=10, rng=rng)
        assert 0 <= added <= 10
        assert mask.sum() == added
        if added:
            rows, cols = np.nonzero(mask)
            assert added == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    # A full 196-patch target still grows in blocks of at most 10 patches.
    mask = np.zeros((14, 14), dtype=bool)
    for _ in range(50):
        before = mask.sum()
        gen.add_block(mask, 10, rng)
        assert mask.sum() - before <= 10


def test_generator_rejects_bad_configuration():
    with pytest.raises(ValueError):
        MaskingGenerator((0, 14))
    with pytest.raises(ValueError):
        MaskingGenerator(14, min_aspect=2.0, max_aspect=1.0)


# ----------------------------------------------------------------------------- collate


def test_collate_view_major_stacking_and_shapes():
    batch = 4
    out = MultiCropMaskCollate(n_tokens=4, seed=0)(_samples(batch, n_local=3))
    g = out["global_crops"]
    assert g.shape == (2 * batch, 1, 32, 32)
    # All crop-0 images (samples 0..3), then all crop-1 images.
    assert g[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 100, 101, 102, 103]
    loc = out["local_crops"]
    assert loc.shape == (3 * batch, 1, 16, 16)
    assert loc[:, 0, 0, 0].tolist() == [1000 + 100 * v + b for v in range(3) for b in range(batch)]
    assert out["masks"].shape == (2 * batch, 4) and out["masks"].dtype == torch.bool
    assert out["n_global_crops"] == 2 and out["n_local_crops"] == 3


def test_collate_mask_counts_strata_and_weights():
    batch, n_tokens = 4, 196
    generator = RecordingMaskingGenerator((14, 14))
    out = collate_multicrop_with_masks(_samples(batch), (0.1, 0.5), 0.5, n_tokens, generator, np.random.default_rng(5))
    masks = out["masks"]
    # int(2B * 0.5) = 4 crops masked, the other 4 empty.
    requested = [target for target, _ in generator.calls]
    assert len(requested) == 4
    strata = np.linspace(0.1, 0.5, 5)
    for i, target in enumerate(requested):  # crop i draws its ratio inside stratum i
        assert int(n_tokens * strata[i]) <= target <= int(n_tokens * strata[i + 1])
    # The collated masks are exactly the 4 generated masks plus 4 empty ones, shuffled over the crops.
    generated = [m.flatten().tolist() for _, m in generator.calls] + [[False] * n_tokens] * 4
    assert sorted(row.tolist() for row in masks) == sorted(generated)
    for target, mask in generator.calls:
        assert target - 3 <= mask.sum() <= target
    assert out["upperbound"] == sum(int(n_tokens * strata[i + 1]) for i in range(4))

    n_masked = int(masks.sum())
    assert out["n_masked_patches"].tolist() == [n_masked]
    assert out["upperbound"] >= n_masked
    torch.testing.assert_close(out["mask_indices"], masks.flatten().nonzero().flatten())
    counts = masks.sum(1)
    crop_of_patch = out["mask_indices"] // n_tokens
    torch.testing.assert_close(out["masks_weight"], 1.0 / counts[crop_of_patch].float())
    # Every masked crop's weights sum to 1; empty crops have none.
    per_crop = torch.zeros(2 * batch).index_add_(0, crop_of_patch, out["masks_weight"])
    torch.testing.assert_close(per_crop, (counts > 0).float())


def test_collate_shuffles_masked_crops():
    collate = MultiCropMaskCollate(n_tokens=196, seed=11)
    masked_positions = set()
    for _ in range(6):
        masked_positions.add(tuple((collate(_samples(4))["masks"].sum(1) > 0).nonzero().flatten().tolist()))
    assert len(masked_positions) > 1
    assert masked_positions != {(0, 1, 2, 3)}


def test_collate_is_deterministic_per_seed_and_call():
    first = MultiCropMaskCollate(196, seed=3)(_samples(4))["masks"]
    run_a = MultiCropMaskCollate(196, seed=3)
    run_b = MultiCropMaskCollate(196, seed=3)
    masks_a = [run_a(_samples(4))["masks"] for _ in range(3)]
    masks_b = [run_b(_samples(4))["masks"] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(masks_a, masks_b))
    assert torch.equal(first, masks_a[0])
    assert not torch.equal(masks_a[0], masks_a[1])  # successive batches differ
    other = MultiCropMaskCollate(196, seed=4)(_samples(4))["masks"]
    assert not torch.equal(other, masks_a[0])


class _MultiCropDataset(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {
            "global_0": torch.full((1, 8, 8), float(index)),
            "global_1": torch.full((1, 8, 8), float(index) + 0.5),
            "local_0": torch.zeros(1, 4, 4),
        }


def _loader_masks(num_workers: int) -> list[torch.Tensor]:
    torch.manual_seed(123)
    loader = DataLoader(
        _MultiCropDataset(), batch_size=2, num_workers=num_workers, collate_fn=MultiCropMaskCollate(16, seed=9)
    )
    return [batch["masks"] for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_collate_in_dataloader_is_reproducible(num_workers):
    masks_1 = _loader_masks(num_workers)
    masks_2 = _loader_masks(num_workers)
    assert len(masks_1) == 4
    assert all(m.shape == (4, 16) for m in masks_1)
    assert all(torch.equal(a, b) for a, b in zip(masks_1, masks_2))
    # Batches (and, with workers, the two workers' streams) draw different masks.
    assert not torch.equal(masks_1[0], masks_1[1])


def test_collate_rejects_inconsistent_samples():
    collate = MultiCropMaskCollate(n_tokens=196)
    samples = _samples(2)
    samples[1]["global_1"] = torch.zeros(1, 24, 24)
    with pytest.raises(ValueError, match="same shape"):
        collate(samples)
    samples = _samples(2)
    del samples[1]["local_1"]
    with pytest.raises(ValueError, match="crop keys"):
        collate(samples)
    with pytest.raises(ValueError, match="global_0"):
        collate([{"local_0": torch.zeros(1, 4, 4)}])
    with pytest.raises(ValueError, match="square"):
        MultiCropMaskCollate(n_tokens=12)
    with pytest.raises(ValueError, match="n_tokens"):
        MultiCropMaskCollate(n_tokens=16, mask_generator=MaskingGenerator((3, 4)))
