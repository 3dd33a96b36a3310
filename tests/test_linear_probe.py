"""Linear probe: the 52-head DINOv2 grid on a frozen backbone (docs/recipe.md §1.4, §2.6)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from PIL import Image

from ultradino_monai.engines.classification import classification_transforms
from ultradino_monai.evaluation.linear_probe import (
    LEARNING_RATES,
    FeatureDataset,
    FrozenFeatureExtractor,
    HeadGridMetric,
    LinearHead,
    LinearHeadGrid,
    LinearProbeModel,
    SummedCrossEntropy,
    cached_probe_features,
    head_grid,
    probe_optimizer,
    select_best_head,
    state_dict_digest,
)
from ultradino_monai.networks.vit import build_vit
from ultradino_monai.optim import warmup_cosine_scheduler

DIM, CLASSES = 16, 3


def tiny_backbone(**kwargs):
    torch.manual_seed(0)
    return build_vit("vit_tiny", depth=4, embed_dim=DIM * 2, num_heads=2, img_size=32, **kwargs)


def test_grid_has_52_heads_with_their_own_learning_rates():
    specs = head_grid()
    assert len(specs) == 52 and len({s.name for s in specs}) == 52
    assert LEARNING_RATES == (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
    for n in (1, 4):
        for pool in (False, True):
            rates = sorted(s.lr for s in specs if s.n_last_blocks == n and s.use_avgpool == pool)
            assert rates == sorted(LEARNING_RATES)
    grid = LinearHeadGrid(specs, feature_dim=DIM, num_classes=CLASSES)
    optimizer = probe_optimizer(grid)
    assert [g["lr"] for g in optimizer.param_groups] == [s.lr for s in specs]
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    # each group holds exactly its own head's weight and bias
    for group, spec in zip(optimizer.param_groups, specs):
        assert [p.data_ptr() for p in group["params"]] == [p.data_ptr() for p in grid.heads[spec.name].parameters()]
    # the shared warmup+cosine schedule keeps every head at its own rate (ratios preserved)
    scheduler = warmup_cosine_scheduler(optimizer, epochs=10, iterations_per_epoch=4, warmup_epochs=5)
    for _ in range(25):
        optimizer.step()
        scheduler.step()
    factor = optimizer.param_groups[0]["lr"] / specs[0].lr
    assert 0 < factor < 1
    assert all(abs(g["lr"] - factor * s.lr) <= 1e-12 for g, s in zip(optimizer.param_groups, specs))
    # DINOv2 scales with batch*world/256, UltraDINO does not
    assert head_grid(lr_scale=2.0)[0].lr == pytest.approx(2e-5)
    with pytest.raises(ValueError, match="distinct"):
        head_grid([1e-3, 1e-3])


def test_linear_head_input_and_initialisation():
    torch.manual_seed(0)
    k = 4
    features = torch.arange(2 * (k + 1) * 3, dtype=torch.float32).reshape(2, k + 1, 3)
    one = LinearHead(3, k, n_last_blocks=1, use_avgpool=False, num_classes=2)
    assert torch.equal(one.linear_input(features), features[:, 3])  # CLS of the last block
    four_pool = LinearHead(3, k, n_last_blocks=4, use_avgpool=True, num_classes=2)
    expected = torch.cat([features[:, 0], features[:, 1], features[:, 2], features[:, 3], features[:, 4]], dim=1)
    assert torch.equal(four_pool.linear_input(features), expected)
    assert four_pool.linear.in_features == 15
    big = LinearHead(384, 4, 4, True, 1000)
    assert torch.count_nonzero(big.linear.bias) == 0
    assert abs(big.linear.weight.std().item() - 0.01) < 5e-4 and abs(big.linear.weight.mean().item()) < 5e-4


def test_extractor_matches_backbone_and_stays_frozen():
    backbone = tiny_backbone(drop_path_rate=0.5)
    extractor = FrozenFeatureExtractor(backbone, n_last_blocks=4)
    extractor.train()  # what SupervisedTrainer does every iteration
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    x = torch.randn(3, 1, 32, 32)
    first, second = extractor(x), extractor(x)
    assert torch.equal(first, second)  # drop path 0.5 would differ if the backbone were in train mode
    reference = backbone.forward_features(x)
    assert first.shape == (3, 5, DIM * 2)
    torch.testing.assert_close(first[:, 3], reference["x_norm_clstoken"])
    # avgpool: mean of the last block's normed patch tokens, the 4 registers left out
    torch.testing.assert_close(first[:, 4], reference["x_norm_patchtokens"].mean(dim=1))
    layers = backbone.get_intermediate_layers(x, 4, norm=True, reshape=False, return_class_token=True)
    for row, (_, cls) in enumerate(layers):
        torch.testing.assert_close(first[:, row], cls)


def test_batched_grid_equals_each_head_on_its_own():
    torch.manual_seed(0)
    specs = head_grid()
    shuffled = specs[7:] + specs[:7]  # grid order need not be grouped
    for order in (specs, shuffled):
        grid = LinearHeadGrid(order, feature_dim=DIM, num_classes=CLASSES)
        features = torch.randn(5, 5, DIM)
        logits = grid(features)
        assert logits.shape == (52, 5, CLASSES)
        for index, spec in enumerate(order):
            torch.testing.assert_close(logits[index], grid.heads[spec.name](features))


def test_summed_cross_entropy_is_the_sum_of_the_heads():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    expected = F.cross_entropy(logits[0], labels) + F.cross_entropy(logits[1], labels)
    torch.testing.assert_close(SummedCrossEntropy()(logits, labels), expected)
    soft = F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    manual = sum((-(soft * F.log_softmax(v, -1)).sum(-1)).mean() for v in logits)
    torch.testing.assert_close(SummedCrossEntropy()(logits, soft), manual)


def test_selection_picks_the_best_validation_head_first_on_ties():
    specs = head_grid([1e-3, 1e-2, 1e-1], [1], [False])
    labels = torch.tensor([0, 1, 2, 0, 1])
    right = F.one_hot(labels, 3).float()
    wrong = F.one_hot((labels + 1) % 3, 3).float()
    half = right.clone()
    half[:2] = wrong[:2]  # 3 / 5 right
    metric = HeadGridMetric(specs)
    metric.reset()
    metric.update((torch.stack([wrong, half, half]), labels))
    value = metric.compute()
    assert value == pytest.approx(0.6)
    assert metric.results["accuracy"] == {specs[0].name: 0.0, specs[1].name: 0.6, specs[2].name: 0.6}
    assert metric.results["best_head"] == specs[1].name  # tie with specs[2]: the earlier head wins
    assert select_best_head({s.name: a for s, a in zip(specs, (0.2, 0.3, 0.9))}, specs) == specs[2].name
    # a test metric reports the head chosen on validation, not the best test head
    test_metric = HeadGridMetric(specs, report_head=lambda: specs[0].name)
    test_metric.reset()
    test_metric.update((torch.stack([wrong, half, right]), labels))
    assert test_metric.compute() == 0.0 and test_metric.results["best_head"] == specs[2].name


def _engines(model, train_loader, val_loader, specs, epochs, prepare_batch=None):
    optimizer = probe_optimizer(model.grid)
    scheduler = warmup_cosine_scheduler(optimizer, epochs, len(train_loader), warmup_epochs=1)
    metric = HeadGridMetric(specs)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val_loader,
        network=model,
        key_val_metric={"val_best_head_accuracy": metric},
        decollate=False,
    )
    extra = {"prepare_batch": prepare_batch} if prepare_batch is not None else {}
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=train_loader,
        network=model,
        optimizer=optimizer,
        loss_function=SummedCrossEntropy(),
        decollate=False,
        train_handlers=[
            LrScheduleHandler(scheduler, print_lr=False, epoch_level=False),
            ValidationHandler(interval=epochs, validator=evaluator),
        ],
        **extra,
    )
    return trainer, metric


def test_probe_run_leaves_the_backbone_untouched():
    backbone = tiny_backbone(drop_path_rate=0.3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    specs = head_grid()
    model = LinearProbeModel(LinearHeadGrid(specs, DIM * 2, CLASSES), FrozenFeatureExtractor(backbone, 4))
    heads_before = {k: v.clone() for k, v in model.grid.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 32, 32, generator=generator)
    labels = torch.arange(8) % CLASSES
    data = [{"image": images[i], "label": labels[i]} for i in range(8)]
    loader = DataLoader(data, batch_size=4, shuffle=True)
    trainer, metric = _engines(model, loader, DataLoader(data, batch_size=4), specs, epochs=2)
    trainer.run()
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, BN/LayerNorm stats included
    assert not backbone.training
    changed = [k for k, v in model.grid.state_dict().items() if not torch.equal(v, heads_before[k])]
    assert len(changed) == 2 * 52  # every head's weight and bias moved
    assert set(metric.results["accuracy"]) == {s.name for s in specs}


def _clusters(n_per_class: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, 5, DIM, generator=torch.Generator().manual_seed(123)) * 2.0
    labels = torch.arange(CLASSES).repeat_interleave(n_per_class)
    features = centres[labels] + 0.5 * torch.randn(len(labels), 5, DIM, generator=generator)
    return features, labels


def test_probe_separates_separable_features():
    torch.manual_seed(0)
    train_x, train_y = _clusters(40, 1)
    val_x, val_y = _clusters(20, 2)
    test_x, test_y = _clusters(20, 3)
    specs = head_grid()
    model = LinearProbeModel(LinearHeadGrid(specs, DIM, CLASSES), extractor=None)
    train_loader = DataLoader(FeatureDataset(train_x, train_y), batch_size=16, shuffle=True, drop_last=True)
    val_loader = DataLoader(FeatureDataset(val_x, val_y), batch_size=32)
    trainer, metric = _engines(model, train_loader, val_loader, specs, epochs=5)
    trainer.run()
    best = metric.results["best_head"]
    assert metric.results["accuracy"][best] >= 0.95
    model.eval()
    with torch.no_grad():
        predictions = model(test_x)[[s.name for s in specs].index(best)].argmax(-1)
    assert (predictions == test_y).float().mean().item() >= 0.95
    # Each head trains at its own rate: the four heads at the smallest rate (1e-5, about 35 SGD steps)
    # barely move from their N(0, 0.01) start, so on average they stay clearly below the winner, while
    # every head from 1e-4 up separates the clusters. With one shared rate all 52 heads would tie.
    accuracy = metric.results["accuracy"]
    slowest = [accuracy[s.name] for s in specs if s.lr == min(LEARNING_RATES)]
    assert len(slowest) == 4 and sum(slowest) / len(slowest) <= accuracy[best] - 0.25
    assert all(accuracy[s.name] >= 0.95 for s in specs if s.lr >= 1e-4)


def test_feature_cache_hits_and_invalidates(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(path)
        items.append({"image": str(path), "label": i % 2})
    extractor = FrozenFeatureExtractor(tiny_backbone(), 4)
    transforms = classification_transforms(False, (32, 32), "fus", 1)
    desc = {"spatial_size": [32, 32], "normalization": "fus"}
    cache = tmp_path / "cache"
    first = cached_probe_features(extractor, items, transforms, desc, cache, "cpu", batch_size=3)
    assert not first["cache_hit"] and first["features"].shape == (4, 5, DIM * 2)
    assert first["labels"].tolist() == [0, 1, 0, 1]
    second = cached_probe_features(extractor, items, transforms, desc, cache, "cpu")
    assert second["cache_hit"] and torch.equal(first["features"], second["features"])
    # the cached features are what the backbone gives for the preprocessed image
    direct = extractor(transforms(dict(items[2]))["image"].as_tensor()[None])
    torch.testing.assert_close(second["features"][2:3], direct)
    # another preprocessing, other weights, or a replaced image: recomputed
    assert not cached_probe_features(extractor, items, transforms, {**desc, "normalization": "none"}, cache, "cpu")[
        "cache_hit"
    ]
    other = FrozenFeatureExtractor(build_vit("vit_tiny", depth=4, embed_dim=DIM * 2, num_heads=2, img_size=32), 4)
    assert state_dict_digest(other.backbone) != state_dict_digest(extractor.backbone)
    assert not cached_probe_features(other, items, transforms, desc, cache, "cpu")["cache_hit"]
    Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(items[1]["image"])
    os.utime(items[1]["image"], ns=(time.time_ns(), time.time_ns() + 10**9))
    third = cached_probe_features(extractor, items, transforms, desc, cache, "cpu")
    assert not third["cache_hit"] and not torch.equal(third["features"][1], first["features"][1])
    assert torch.equal(third["features"][0], first["features"][0])
