"""DINO head, EMA teacher, RankMe, kNN and the torch.distributed code paths."""

from __future__ import annotations

import copy
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ultradino_monai.networks.heads import DINOHead
from ultradino_monai.ssl import (
    DINOLoss,
    iBOTPatchLoss,
    knn_accuracy,
    knn_classify,
    knn_leave_one_group_out,
    rankme,
    sinkhorn_knopp,
    update_ema,
)

# ----------------------------------------------------------------------------- head


def test_dino_head_structure_and_unit_prototypes():
    head = DINOHead(in_dim=12, out_dim=40, hidden_dim=16, bottleneck_dim=8)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 16), (16, 16), (16, 8)]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    g = head.last_layer.parametrizations.weight.original0
    assert g.shape == (40, 1) and torch.all(g == 1.0)
    assert g.requires_grad  # DINOv2 fills g with 1 but keeps it trainable
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(40))
    x = torch.randn(2, 5, 12) * 100
    logits = head(x)
    assert logits.shape == (2, 5, 40)
    assert logits.abs().max() <= 1.0 + 1e-5  # cosine similarities between unit vectors
    assert all("last_layer" in n for n, _ in head.named_parameters() if "parametrizations" in n)
    frozen = DINOHead(12, 40, 16, 8, freeze_last_layer_norm=True)
    assert not frozen.last_layer.parametrizations.weight.original0.requires_grad


def test_dino_head_loads_legacy_weight_norm_keys():
    head = DINOHead(6, 10, 8, 4)
    state = head.state_dict()
    legacy = {k: v for k, v in state.items() if "parametrizations" not in k}
    legacy["last_layer.weight_g"] = torch.full((10, 1), 2.0)
    legacy["last_layer.weight_v"] = state["last_layer.parametrizations.weight.original1"]
    fresh = DINOHead(6, 10, 8, 4)
    fresh.load_state_dict(legacy)
    torch.testing.assert_close(fresh.last_layer.weight.norm(dim=1), torch.full((10,), 2.0))


# ----------------------------------------------------------------------------- EMA


def _two_param_module(weight: float, bias: float) -> nn.Linear:
    m = nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.fill_(weight)
        m.bias.fill_(bias)
    return m


def test_update_ema_two_parameters():
    teacher, student = _two_param_module(1.0, 2.0), _two_param_module(3.0, -2.0)
    update_ema(teacher, student, momentum=0.9)
    assert teacher.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert teacher.bias.item() == pytest.approx(0.9 * 2.0 + 0.1 * -2.0)
    assert student.weight.item() == 3.0  # the student is untouched
    update_ema(teacher, student, momentum=1.0)
    assert teacher.weight.item() == pytest.approx(1.2)
    update_ema(teacher, student, momentum=0.0)
    assert teacher.bias.item() == -2.0


def test_update_ema_rejects_mismatch():
    with pytest.raises(ValueError, match="differ"):
        update_ema(nn.Linear(1, 1), nn.Sequential(nn.Linear(1, 1)), 0.9)
    with pytest.raises(ValueError, match="shape|teacher"):
        update_ema(nn.Linear(1, 2), nn.Linear(1, 1), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        update_ema(nn.Linear(1, 1), nn.Linear(1, 1), 1.5)


def test_update_ema_on_dino_head_copy():
    student = DINOHead(4, 6, 5, 3)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    update_ema(teacher, student, 0.99)
    for n, p in teacher.named_parameters():
        torch.testing.assert_close(p, before[n] + 0.01)


# ----------------------------------------------------------------------------- RankMe


def test_rankme_full_rank_vs_collapsed():
    assert rankme(torch.eye(8)) == pytest.approx(8.0, rel=1e-4)
    assert rankme(torch.diag(torch.tensor([3.0, 3.0, 0.0, 0.0]))) == pytest.approx(2.0, rel=1e-4)
    rank_one = torch.outer(torch.arange(1.0, 11.0), torch.tensor([1.0, -2.0, 0.5, 4.0]))
    assert rankme(rank_one) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError):
        rankme(torch.ones(3))


# ----------------------------------------------------------------------------- kNN


def test_knn_on_separable_clusters():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    train_labels = torch.arange(3).repeat_interleave(10)
    train = centers[train_labels] * 5 + 0.1 * torch.randn(30, 3, generator=gen)
    test_labels = torch.tensor([0, 1, 2, 2, 1, 0])
    test = centers[test_labels] + 0.05 * torch.randn(6, 3, generator=gen)
    preds = knn_classify(train, train_labels, test, k=5, temperature=0.07, num_classes=3)
    assert preds.tolist() == test_labels.tolist()
    assert knn_accuracy(train, train_labels, test, test_labels, k=5) == 1.0
    assert knn_accuracy(train, train_labels, test, (test_labels + 1) % 3, k=5) == 0.0


def test_knn_votes_are_temperature_weighted():
    # One very similar neighbour of class 0 against two less similar ones of class 1.
    train = torch.tensor([[1.0, 0.1], [math.cos(1.0), math.sin(1.0)], [math.cos(1.0), -math.sin(1.0)]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_classify(train, labels, query, k=3, temperature=0.07).tolist() == [0]
    assert knn_classify(train, labels, query, k=3, temperature=100.0).tolist() == [1]  # ~ majority vote
    assert knn_classify(train, labels, query, k=50, temperature=100.0).tolist() == [1]  # k clamped to 3
    with pytest.raises(ValueError):
        knn_classify(train, labels, query, num_classes=1)


# ----------------------------------------------------------------------------- distributed paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    cls_logits = torch.randn(3, 5, generator=gen)  # same B on every rank
    patch_logits = torch.randn(2 + 2 * rank, 5, generator=gen)  # mask counts differ per rank
    return cls_logits, patch_logits


def _distributed_worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cls_logits, patch_logits = _rank_inputs(rank)
        dino, ibot = DINOLoss(5, center_momentum=0.5), iBOTPatchLoss(5, center_momentum=0.5)
        dino.update_center(cls_logits)
        ibot.update_center(patch_logits)
        dino.apply_center_update()
        ibot.apply_center_update()
        # A rank without masked patches still joins the reduction; the mean is over the other rank.
        ibot_sparse = iBOTPatchLoss(5, center_momentum=0.5)
        ibot_sparse.update_center(patch_logits if rank == 0 else patch_logits[:0])
        ibot_sparse.apply_center_update()
        results[rank] = {
            "ibot_sparse_center": ibot_sparse.center.clone(),
            "ibot_sparse_sinkhorn": ibot.sinkhorn_knopp_teacher(patch_logits if rank == 0 else patch_logits[:0], 0.1),
            "dino_center": dino.center.clone(),
            "ibot_center": ibot.center.clone(),
            "sinkhorn": sinkhorn_knopp(cls_logits, 0.1, 3),
            "ibot_sinkhorn": ibot.sinkhorn_knopp_teacher(patch_logits, 0.1, 3),
        }
        # The EMA unwraps a DDP-wrapped student (parameter names gain no "module." prefix).
        teacher = _two_param_module(1.0, 2.0)
        student = nn.parallel.DistributedDataParallel(_two_param_module(3.0, -2.0))
        update_ema(teacher, student, momentum=0.5)
        results[rank] = {**results[rank], "ema": (teacher.weight.item(), teacher.bias.item())}
    finally:
        dist.destroy_process_group()


def test_knn_leave_one_group_out_never_uses_the_own_patient():
    # angles 0, 10, 25, 90 degrees; patients a, a, b, b; labels 0, 1, 1, 0
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 25.0, 90.0]))
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    # k=1, other patients only: 0 -> 2 (25 deg away; 1 at 10 deg is the same patient), 1 -> 2,
    # 2 -> 1 (15 deg), 3 -> 1 (80 deg)
    assert knn_leave_one_group_out(features, labels, groups, k=1).tolist() == [1, 1, 1, 1]
    # every sample its own group = plain leave-one-out: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 2
    assert knn_leave_one_group_out(features, labels, torch.arange(4), k=1).tolist() == [1, 0, 1, 1]
    # k beyond the other-patient pool (2 samples) is clamped to it
    assert torch.equal(
        knn_leave_one_group_out(features, labels, groups, k=10), knn_leave_one_group_out(features, labels, groups, k=2)
    )
    with pytest.raises(ValueError, match="two groups"):
        knn_leave_one_group_out(features, labels, torch.zeros(4, dtype=torch.long))


def test_distributed_centering_and_sinkhorn_use_global_batch():
    world_size = 2
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(
        _distributed_worker, args=(world_size, _free_port(), results), nprocs=world_size, start_method="fork"
    )
    inputs = [_rank_inputs(r) for r in range(world_size)]
    all_cls = torch.cat([c for c, _ in inputs])
    all_patches = torch.cat([p for _, p in inputs])
    for rank in range(world_size):
        # DINO center: global mean over all ranks' CLS logits.
        torch.testing.assert_close(results[rank]["dino_center"], 0.5 * all_cls.mean(0, keepdim=True))
        # iBOT center: mean over all masked patches of all ranks (ranks hold 2 and 4 patches).
        torch.testing.assert_close(results[rank]["ibot_center"], 0.5 * all_patches.mean(0, keepdim=True))
        assert results[rank]["ema"] == pytest.approx((2.0, 0.0))
        torch.testing.assert_close(results[rank]["ibot_sparse_center"], 0.5 * inputs[0][1].mean(0, keepdim=True))
    torch.testing.assert_close(results[0]["ibot_sparse_sinkhorn"], sinkhorn_knopp(inputs[0][1], 0.1, 3))
    assert results[1]["ibot_sparse_sinkhorn"].shape == (0, 5)
    # Sinkhorn over two ranks equals Sinkhorn on the concatenated global batch.
    torch.testing.assert_close(
        torch.cat([results[r]["sinkhorn"] for r in range(world_size)]), sinkhorn_knopp(all_cls, 0.1, 3)
    )
    torch.testing.assert_close(
        torch.cat([results[r]["ibot_sinkhorn"] for r in range(world_size)]), sinkhorn_knopp(all_patches, 0.1, 3)
    )
