"""UperNet segmenter and the segmentation engine builders: shapes, wiring, layer decay, schedule, loss, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver, from_engine

from ultradino_monai.data.sampling import IterationSampler
from ultradino_monai.engines import segmentation as seg
from ultradino_monai.evaluation.metrics import PooledDiceMetric
from ultradino_monai.evaluation.overlay import PALETTE, colour_overlay
from ultradino_monai.networks.checkpoints import save_backbone
from ultradino_monai.networks.segmenter import Segmenter, default_out_indices
from ultradino_monai.networks.upernet import SimpleFeaturePyramid, UPerHead
from ultradino_monai.networks.vit import BeitBackbone, build_vit

TRAIN_JSON = Path(__file__).resolve().parents[1] / "bundles" / "segmentation" / "configs" / "train.json"


def tiny_vit(img_size=224, depth=12, registers=4, **kwargs):
    # ViT geometry of UltraDINO (patch 16) at a width that runs in milliseconds
    return build_vit(
        "vit_tiny", depth=depth, embed_dim=32, num_heads=2, img_size=img_size, num_register_tokens=registers, **kwargs
    )


# --------------------------------------------------------------------------- shapes and wiring
def test_pyramid_is_56_28_14_7_at_224_and_logits_have_the_input_size():
    torch.manual_seed(0)
    model = Segmenter(tiny_vit(), num_classes=5).eval()
    assert model.out_indices == (3, 5, 7, 11)
    image = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        pyramid = model.extract_pyramid(image)
        logits = model(image)
    assert [tuple(level.shape) for level in pyramid] == [
        (2, 32, 56, 56),
        (2, 32, 28, 28),
        (2, 32, 14, 14),
        (2, 32, 7, 7),
    ]
    assert logits.shape == (2, 5, 224, 224) and logits.dtype == torch.float32
    # non-square inputs keep their aspect: 224 x 160 -> grid 14 x 10
    with torch.no_grad():
        assert model(torch.randn(1, 1, 224, 160)).shape == (1, 5, 224, 160)


def test_pyramid_levels_come_from_the_configured_blocks():
    torch.manual_seed(0)
    backbone = tiny_vit(img_size=64)
    model = Segmenter(backbone, num_classes=3, out_indices=(2, 4, 7, 10)).eval()
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        pyramid = model.extract_pyramid(image)
        block7, block10 = backbone.get_intermediate_layers(image, [7, 10], norm=True, reshape=True)
    torch.testing.assert_close(pyramid[2], block7)  # fpn3 = identity on the third map
    torch.testing.assert_close(pyramid[3], F.max_pool2d(block10, 2, 2))  # fpn4 = max-pool 2


def test_default_out_indices():
    assert default_out_indices(12) == (3, 5, 7, 11)  # docs/recipe.md §1.5
    assert default_out_indices(24) == (7, 11, 15, 23)  # mmseg ViT-L
    assert default_out_indices(6) == (1, 2, 3, 5)
    assert len(set(default_out_indices(5))) == 4
    with pytest.raises(ValueError, match="4-level"):
        default_out_indices(3)


def test_bad_configuration_and_input_errors_are_clear():
    with pytest.raises(ValueError, match="distinct blocks"):
        Segmenter(tiny_vit(depth=4, img_size=64), num_classes=3, out_indices=(0, 1, 2, 4))
    model = Segmenter(tiny_vit(depth=4, img_size=64), num_classes=3).eval()
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 16, 16))  # one patch: no /2 level
    with pytest.raises(ValueError, match="needs a normalisation"):
        SimpleFeaturePyramid(8, norm=None)


def test_uperhead_structure_and_every_parameter_gets_a_gradient():
    head = UPerHead([16] * 4, channels=8, num_classes=3)
    # mmseg UPerHead: PPM with 4 scales, 3 laterals + 3 FPN convs, norm_cfg None -> conv biases, classifier N(0, 0.01)
    assert len(head.psp_modules) == 4 and len(head.lateral_convs) == 3 and len(head.fpn_convs) == 3
    assert head.bottleneck[0].in_channels == 16 + 4 * 8 and head.fpn_bottleneck[0].in_channels == 4 * 8
    assert all(
        isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in head.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules())
    levels = [torch.randn(2, 16, s, s, requires_grad=True) for s in (16, 8, 4, 2)]
    out = head(levels)
    assert out.shape == (2, 3, 16, 16)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(level.grad.abs().sum() > 0 for level in levels)  # every pyramid level reaches the logits


def test_segmenter_has_no_unused_trainable_parameters():
    # DDP needs every trainable parameter in the graph (the mask token is frozen by build_segmenter)
    built = seg.build_segmenter(
        None, 3, img_size=64, scratch_arch="vit_tiny", scratch_overrides={"depth": 4, "embed_dim": 32, "num_heads": 2}
    )
    model = built.model
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert not model.backbone.mask_token.requires_grad


# --------------------------------------------------------------------------- builder switches
def test_build_segmenter_scratch_defaults_follow_the_recipe():
    built = seg.build_segmenter(None, 5, img_size=64, scratch_arch="vit_tiny", scratch_overrides={"depth": 4})
    backbone = built.model.backbone
    assert built.source == "scratch"
    # drop path 0.4 with the linear per-depth rule (docs/recipe.md §1.5): 0, 0.4/3, 0.8/3, 0.4
    np.testing.assert_allclose(backbone.drop_path_rates(), [0.0, 0.4 / 3, 0.8 / 3, 0.4], rtol=1e-6)
    assert backbone.num_register_tokens == 4
    assert backbone.init_values == 1.0  # mmseg config init_values (docs/recipe.md §1.5)
    assert built.mean == pytest.approx((0.1842924807,)) and built.std == pytest.approx((0.2187705424,))
    assert built.model.decoder_config()["decoder_channels"] == 192  # C = D


def test_register_tokens_kept_or_dropped(tmp_path):
    torch.manual_seed(0)
    source = tiny_vit(img_size=64, depth=4)
    with torch.no_grad():
        source.reg_token.normal_()
    path = tmp_path / "backbone.pt"
    save_backbone(source, path)

    kept = seg.build_segmenter(path, 3, img_size=64)
    assert kept.model.backbone.num_register_tokens == 4
    torch.testing.assert_close(kept.model.backbone.reg_token, source.reg_token)
    assert kept.source == "ultradino"

    dropped = seg.build_segmenter(path, 3, img_size=64, keep_registers=False)
    assert dropped.model.backbone.num_register_tokens == 0
    assert dropped.model.backbone.reg_token is None
    assert seg.segmenter_spec(dropped, {"a": 0, "b": 1, "c": 2}, 64)["pretrained"]["registers_dropped"] is True
    assert seg.segmenter_spec(kept, {"a": 0, "b": 1, "c": 2}, 64)["pretrained"]["registers_dropped"] is False
    # the two models compute different functions: registers take part in attention
    image = torch.randn(1, 1, 64, 64)
    kept.model.eval(), dropped.model.eval()
    with torch.no_grad():
        a = kept.model.backbone.get_intermediate_layers(image, [3])[0]
        b = dropped.model.backbone.get_intermediate_layers(image, [3])[0]
    assert not torch.allclose(a, b)

    scratch = seg.build_segmenter(
        None, 3, img_size=64, scratch_arch="vit_tiny", scratch_overrides={"depth": 4}, keep_registers="false"
    )
    assert scratch.model.backbone.num_register_tokens == 0


def test_model_spec_round_trip_rebuilds_the_same_function(tmp_path):
    torch.manual_seed(0)
    built = seg.build_segmenter(
        None,
        4,
        img_size=64,
        scratch_arch="vit_tiny",
        scratch_overrides={"depth": 4, "embed_dim": 32, "num_heads": 2},
        decoder_channels=16,
    )
    labels = {"background": 0, "a": 1, "b": 2, "c": 3}
    model_path = tmp_path / "model.pt"
    torch.save(built.model.state_dict(), model_path)
    seg.write_model_spec(model_path, seg.segmenter_spec(built, labels, 64))
    spec = seg.read_model_spec(model_path)
    assert spec["labels"] == labels and spec["image_size"] == [64, 64] and spec["num_classes"] == 4
    rebuilt = seg.load_segmenter(model_path)
    built.model.eval()
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image), built.model(image))
    with pytest.raises(FileNotFoundError, match="model description"):
        seg.read_model_spec(tmp_path / "other.pt")


def test_beit_spec_round_trip():
    backbone = BeitBackbone(img_size=32, patch_size=16, in_chans=1, embed_dim=32, depth=4, num_heads=2)
    built = seg.BuiltSegmenter(Segmenter(backbone, 2, decoder_channels=8), (0.5,), (0.25,), 1, "usfm")
    spec = json.loads(json.dumps(seg.segmenter_spec(built, {"bg": 0, "fg": 1}, 32)))
    rebuilt = seg.segmenter_from_spec(spec)
    rebuilt.load_state_dict(built.model.state_dict(), strict=True)  # same architecture, key for key


def test_sigmoid_dice_ce_matches_the_hand_computed_mmseg_formula():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 1.5]]]])  # [B=1, K=2, H=1, W=2]
    target = torch.tensor([[[0, 1]]])  # [B, H, W]
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5, 1.5])))  # sigmoid, classes then pixels flattened
    t = np.array([1.0, 0.0, 0.0, 1.0])  # one-hot of (0, 1)
    dice = 2 * (p * t).sum() / ((p * p).sum() + 1e-3 + (t * t).sum() + 1e-3)
    ce = np.mean(
        [-np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(0.5))), -np.log(np.exp(1.5) / (np.exp(-1.0) + np.exp(1.5)))]
    )
    loss = seg.SigmoidDiceCELoss()(logits, target.unsqueeze(1))
    assert loss.item() == pytest.approx(ce + 1 - dice, rel=1e-6)
    assert seg.segmentation_loss("dice_ce").__class__.__name__ == "DiceCELoss"
    with pytest.raises(ValueError, match="unknown loss"):
        seg.segmentation_loss("focal")


def test_iteration_sampler_streams_permutations_and_splits_ranks():
    data = list(range(7))
    single = IterationSampler(data, samples_per_replica=21, seed=3, num_replicas=1, rank=0)
    stream = list(single)
    assert len(stream) == len(single) == 21
    for chunk in range(3):  # three full passes, each a permutation
        assert sorted(stream[7 * chunk : 7 * chunk + 7]) == data
    assert list(IterationSampler(data, 21, seed=3, num_replicas=1, rank=0)) == stream  # seeded
    single.set_epoch(1)
    assert list(single) != stream
    ranks = [list(IterationSampler(data, 10, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    merged = [index for pair in zip(*ranks) for index in pair]
    global_stream = list(IterationSampler(data, 20, seed=3, num_replicas=1, rank=0))
    assert merged == global_stream  # rank r takes every 2nd index of one global stream


# --------------------------------------------------------------------------- best checkpoint
class Oracle(torch.nn.Module):
    """Predicts the label hidden in the image, except in the top ``corrupt`` fraction of rows (class 0 there)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.corrupt = torch.nn.Parameter(torch.tensor(0.0), requires_grad=False)

    def forward(self, image):
        label = image[:, 0].round().long()
        rows = image.shape[-2]
        label[:, : int(round(float(self.corrupt) * rows))] = 0
        return F.one_hot(label, self.num_classes).permute(0, 3, 1, 2).float()


def test_best_checkpoint_is_the_highest_validation_dice(tmp_path):
    config = json.loads(TRAIN_JSON.read_text())
    saver_config = next(h for h in config["validate"]["handlers"] if h["_target_"] == "CheckpointSaver")
    # what the bundle asks for: keep the single best key-metric model as model.pt, higher is better
    assert saver_config["save_key_metric"] is True and saver_config["key_metric_negative_sign"] is False
    assert saver_config["key_metric_filename"] == "model.pt"
    assert saver_config["key_metric_name"] == "@key_metric_name" and config["key_metric_name"] == "val_fg_dice"
    assert list(config["validate"]["key_metric"]) == ["val_fg_dice"]

    torch.manual_seed(0)
    labels = torch.randint(0, 3, (4, 1, 8, 8))
    data = [{"image": label.float(), "label": label} for label in labels]
    network = Oracle(3)
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=network,
        key_val_metric={"val_fg_dice": PooledDiceMetric(3, output_transform=from_engine(["pred", "label"]))},
        val_handlers=[
            CheckpointSaver(
                save_dir=str(tmp_path),
                save_dict={"model": network},
                save_key_metric=True,
                key_metric_name="val_fg_dice",
                key_metric_filename="model.pt",
                key_metric_negative_sign=False,
            )
        ],
    )
    recorder = seg.ValidationRecorder(tmp_path / "validation.jsonl", "val_fg_dice", {"bg": 0, "a": 1, "b": 2})
    trainer = Engine(lambda engine, batch: None)
    recorder.attach(evaluator, trainer)
    scores = {}
    for iteration, corrupt in ((1, 0.5), (2, 0.125), (3, 0.25)):
        trainer.state.iteration = iteration
        network.corrupt.fill_(corrupt)
        evaluator.run()
        scores[corrupt] = evaluator.state.metrics["val_fg_dice"]
    assert scores[0.125] > scores[0.25] > scores[0.5]
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(saved["corrupt"]) == 0.125  # not the last (0.25), not the first (0.5)
    assert recorder.best["iteration"] == 2 and recorder.best["val_fg_dice"] == pytest.approx(scores[0.125])
    lines = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3] and set(lines[0]["per_class"]) == {"bg", "a", "b"}


def test_labels_must_be_contiguous(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"labels": {"background": 0, "x": 2}, "training": []}))
    with pytest.raises(ValueError, match="not 0..1"):
        seg.labels_of(path)
    path.write_text(json.dumps({"labels": {"x": 1, "background": 0}, "training": []}))
    assert list(seg.labels_of(path)) == ["background", "x"]


def test_colour_overlay_blends_only_foreground():
    grey = np.full((2, 2), 100, dtype=np.uint8)
    mask = np.array([[0, 1], [2, 0]])
    overlay = colour = colour_overlay(grey, mask, alpha=0.5)
    assert overlay.shape == (2, 2, 3) and overlay.dtype == np.uint8
    assert tuple(colour[0, 0]) == (100, 100, 100)
    expected = np.rint(0.5 * 100 + 0.5 * np.array(PALETTE[1])).astype(np.uint8)
    assert tuple(colour[0, 1]) == tuple(expected)
