"""DINO CLS, iBOT patch and KoLeo losses; softmax centering and Sinkhorn-Knopp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ultradino_monai.ssl import DINOLoss, KoLeoLoss, iBOTPatchLoss, masks_weight_from_masks, sinkhorn_knopp


def _log_softmax_row(row: list[float], temp: float) -> list[float]:
    scaled = [v / temp for v in row]
    m = max(scaled)
    log_z = m + math.log(sum(math.exp(v - m) for v in scaled))
    return [v - log_z for v in scaled]


def _ce_batch_mean(teacher: list[list[float]], student: list[list[float]], temp: float = 0.1) -> float:
    """Pure-python mean over rows of -sum_k t_k log softmax(s / temp)_k."""
    total = 0.0
    for t_row, s_row in zip(teacher, student):
        total -= sum(t * ls for t, ls in zip(t_row, _log_softmax_row(s_row, temp)))
    return total / len(teacher)


# ----------------------------------------------------------------------------- DINO loss


def test_dino_loss_two_global_two_local_matches_hand_computation():
    # B = 2 images, K = 3 prototypes.
    t1 = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    t2 = [[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]
    g1 = [[0.2, -0.1, 0.05], [0.0, 0.3, -0.2]]
    g2 = [[-0.3, 0.1, 0.2], [0.15, 0.15, -0.05]]
    l1 = [[0.4, 0.0, -0.4], [0.05, -0.05, 0.1]]
    l2 = [[0.0, 0.25, 0.1], [-0.2, 0.3, 0.0]]
    # Cross-view terms only: g1 <- t2, g2 <- t1, and each local against both teachers.
    n_terms = 2 * 1 + 2 * 2
    expected_global = (_ce_batch_mean(t2, g1) + _ce_batch_mean(t1, g2)) / n_terms
    expected_local = sum(_ce_batch_mean(t, s) for s in (l1, l2) for t in (t1, t2)) / n_terms

    loss = DINOLoss(out_dim=3)
    students = [torch.tensor(v) for v in (g1, g2, l1, l2)]
    teachers = [torch.tensor(v) for v in (t1, t2)]
    terms = loss.loss_terms(students, teachers)
    assert terms["dino_global_crops_loss"].item() == pytest.approx(expected_global, rel=1e-5)
    assert terms["dino_local_crops_loss"].item() == pytest.approx(expected_local, rel=1e-5)
    assert loss(students, teachers).item() == pytest.approx(expected_global + expected_local, rel=1e-5)


def test_dino_loss_uses_18_terms_for_2_global_8_local():
    gen = torch.Generator().manual_seed(0)
    batch, k = 3, 5
    teachers = [torch.softmax(torch.randn(batch, k, generator=gen), dim=-1) for _ in range(2)]
    students = [torch.randn(batch, k, generator=gen) for _ in range(10)]

    def ce(t, s):
        return -(t * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()

    pairs = [(s, t) for s in range(10) for t in range(2) if s != t]
    assert len(pairs) == 18
    expected = sum(ce(teachers[t], students[s]) for s, t in pairs) / 18
    assert DINOLoss(k)(students, teachers).item() == pytest.approx(expected.item(), rel=1e-5)

    # Pairing a global crop with its own teacher would change the value: the exclusion matters.
    with_self = (sum(ce(teachers[t], students[s]) for s in range(10) for t in range(2))) / 20
    assert abs(with_self.item() - expected.item()) > 1e-4


def test_dino_loss_gradient_flows_only_to_student():
    teachers = [torch.softmax(torch.randn(2, 4), -1) for _ in range(2)]
    students = [torch.randn(2, 4, requires_grad=True) for _ in range(4)]
    DINOLoss(4)(students, teachers).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)


@pytest.mark.parametrize(
    "n_students, n_teachers, shape_ok, message",
    [
        (1, 2, True, "student_logits_list has 1 views but the teacher has 2 global views"),
        (1, 1, True, "no cross-view terms"),
        (3, 2, False, r"view 4 has shape \(3, 4\), expected \(2, 4\)"),
    ],
)
def test_dino_loss_rejects_bad_inputs(n_students, n_teachers, shape_ok, message):
    loss = DINOLoss(4)
    teachers = [torch.full((2, 4), 0.25) for _ in range(n_teachers)]
    students = [torch.zeros(2, 4) for _ in range(n_students)]
    if not shape_ok:
        students[-1] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=message):
        loss(students, teachers)


# ----------------------------------------------------------------------------- centering


def test_softmax_centering_and_lazy_center_ema():
    loss = DINOLoss(out_dim=3, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]])
    tau = 0.5
    # Center starts at 0: targets are softmax(h / tau).
    t = loss.softmax_center_teacher(logits, tau)
    torch.testing.assert_close(t, torch.softmax(logits / tau, dim=-1))

    loss.update_center(logits)
    # Not applied yet (DINOv2 applies the all-reduced batch mean at the next step).
    torch.testing.assert_close(loss.center, torch.zeros(1, 3))
    batch_mean = torch.tensor([[2.0, 1.0, 1.5]])
    expected_center = 0.9 * torch.zeros(1, 3) + 0.1 * batch_mean
    t_next = loss.softmax_center_teacher(logits, tau)
    torch.testing.assert_close(loss.center, expected_center)
    torch.testing.assert_close(t_next, torch.softmax((logits - expected_center) / tau, dim=-1))

    # Second update: c = 0.9 c + 0.1 mean.
    loss.update_center(torch.zeros(4, 3))
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, 0.9 * expected_center)
    # The center is a buffer and round-trips through the state dict.
    state = loss.state_dict()
    assert set(state) == {"center"}
    restored = DINOLoss(out_dim=3)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.center, 0.9 * expected_center)


def test_ibot_center_is_mean_over_masked_patches():
    loss = iBOTPatchLoss(patch_out_dim=2, center_momentum=0.5)
    loss.update_center(torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]]))
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, 0.5 * torch.tensor([[2.0, 2.0]]))
    loss.update_center(torch.zeros(0, 2))  # no masked patches this step: nothing to average
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, torch.tensor([[1.0, 1.0]]))


def _sinkhorn_reference(logits: np.ndarray, temp: float, n_iterations: int) -> np.ndarray:
    """The textbook definition, in float64 numpy, without the max-subtraction."""
    q = np.exp(logits / temp).T  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def test_sinkhorn_knopp_marginals_and_reference():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, generator=gen)  # B = 6 samples, K = 4 prototypes
    temp = 0.5
    out = sinkhorn_knopp(logits, temp, n_iterations=3)
    np.testing.assert_allclose(out.numpy(), _sinkhorn_reference(logits.double().numpy(), temp, 3), rtol=1e-5)
    # Each sample's assignment is a distribution (the last step normalises columns of Q).
    torch.testing.assert_close(out.sum(dim=1), torch.ones(6))
    # Each prototype receives about B/K of the mass; exactly so once the iteration converges.
    assert torch.allclose(out.sum(dim=0), torch.full((4,), 6 / 4), atol=0.1)
    converged = sinkhorn_knopp(logits, temp, n_iterations=200)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((4,), 6 / 4), atol=1e-5, rtol=0)
    # Uniform prototype marginal pulls a skewed assignment towards balance.
    assert out.sum(0).std() < torch.softmax(logits / temp, -1).sum(0).std()


def test_sinkhorn_is_finite_at_small_temperature():
    # exp(10 / 0.04) overflows float32; the max shift keeps it finite without changing the result.
    logits = torch.tensor([[10.0, 9.5, 9.8], [9.9, 9.7, 9.6], [9.6, 9.9, 9.5]])
    out = sinkhorn_knopp(logits, 0.04, 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(1), torch.ones(3))
    np.testing.assert_allclose(out.numpy(), _sinkhorn_reference(logits.double().numpy() - 10.0, 0.04, 3), rtol=1e-4)


def test_loss_modules_expose_sinkhorn():
    logits = torch.randn(5, 3)
    torch.testing.assert_close(DINOLoss(3).sinkhorn_knopp_teacher(logits, 0.1), sinkhorn_knopp(logits, 0.1))
    torch.testing.assert_close(
        iBOTPatchLoss(3).sinkhorn_knopp_teacher(logits, 0.1, n_masked_patches=5), sinkhorn_knopp(logits, 0.1)
    )
    with pytest.raises(ValueError, match="padding"):
        iBOTPatchLoss(3).sinkhorn_knopp_teacher(logits, 0.1, n_masked_patches=4)


# ----------------------------------------------------------------------------- iBOT loss


def _ibot_case():
    # 2B = 4 global crops, N = 6 patches; |M| = 2, 0, 3, 1.
    masks = torch.zeros(4, 6, dtype=torch.bool)
    masks[0, [1, 4]] = True
    masks[2, [0, 2, 5]] = True
    masks[3, [3]] = True
    gen = torch.Generator().manual_seed(1)
    m, k = int(masks.sum()), 5
    teacher = torch.softmax(torch.randn(m, k, generator=gen), dim=-1)
    student = torch.randn(m, k, generator=gen)
    return masks, teacher, student


def test_ibot_masks_weight_per_image():
    masks, _, _ = _ibot_case()
    torch.testing.assert_close(masks_weight_from_masks(masks), torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 1.0]))


def test_ibot_loss_matches_explicit_formula():
    masks, teacher, student = _ibot_case()
    rows_per_crop = [2, 0, 3, 1]
    expected = 0.0
    row = 0
    for count in rows_per_crop:  # -(1 / 2B) sum_i (1 / |M_i|) sum_p sum_k t log softmax(s / 0.1)
        for _ in range(count):
            expected += _ce_batch_mean([teacher[row].tolist()], [student[row].tolist()]) / count
            row += 1
    expected /= 4  # the empty crop counts in 2B = 4
    loss = iBOTPatchLoss(5)
    assert loss.forward_masked(student, teacher, masks).item() == pytest.approx(expected, rel=1e-5)

    # Collate-style call: buffer padded to an upper bound, explicit count and weights.
    padded_student = torch.cat([student, torch.randn(3, 5)])
    padded_teacher = torch.cat([teacher, torch.full((3, 5), 0.2)])
    weights = masks_weight_from_masks(masks)
    value = loss.forward_masked(
        padded_student, padded_teacher, masks, n_masked_patches=torch.tensor([6]), masks_weight=weights
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_ibot_loss_is_zero_without_masks_and_checks_inputs():
    loss = iBOTPatchLoss(5)
    masks = torch.zeros(4, 6, dtype=torch.bool)
    empty = torch.zeros(0, 5, requires_grad=True)
    value = loss.forward_masked(empty, torch.zeros(0, 5), masks)
    assert value.item() == 0.0
    value.backward()
    masks[0, 0] = True
    with pytest.raises(ValueError, match="n_masked_patches"):
        loss.forward_masked(torch.zeros(1, 5), torch.zeros(1, 5), masks, n_masked_patches=2)
    with pytest.raises(ValueError, match="bool"):
        loss.forward_masked(torch.zeros(1, 5), torch.zeros(1, 5), masks.float())


# ----------------------------------------------------------------------------- KoLeo


def test_koleo_three_points_hand_computed():
    deg = math.pi / 180
    # Different norms check the L2 normalisation; angles 0, 30, 100 degrees.
    points = torch.tensor(
        [
            [2.0 * math.cos(0.0), 2.0 * math.sin(0.0)],
            [0.5 * math.cos(30 * deg), 0.5 * math.sin(30 * deg)],
            [3.0 * math.cos(100 * deg), 3.0 * math.sin(100 * deg)],
        ]
    )
    # Chord length between unit vectors at angle a is 2 sin(a / 2).
    # NN(0) = 1 (30 deg), NN(1) = 0 (30 deg < 70 deg), NN(2) = 1 (70 deg).
    d01 = 2 * math.sin(15 * deg)
    d12 = 2 * math.sin(35 * deg)
    expected = -(math.log(d01 + 1e-8) * 2 + math.log(d12 + 1e-8)) / 3
    koleo = KoLeoLoss()
    assert koleo.nearest_neighbours(torch.nn.functional.normalize(points, dim=-1)).tolist() == [1, 0, 1]
    assert koleo(points).item() == pytest.approx(expected, rel=1e-6)


def test_koleo_fp32_and_duplicates_are_finite():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16, requires_grad=True)
    value = KoLeoLoss()(x)
    assert value.dtype == torch.float32
    # Duplicate points: distance 0, loss -log(1e-8), still finite with a finite gradient.
    assert value.item() == pytest.approx(-(2 * math.log(1e-8) + math.log(math.sqrt(2) + 1e-8)) / 3, rel=1e-5)
    value.backward()
    assert torch.isfinite(x.grad.float()).all()
    with pytest.raises(ValueError, match="needs at least 2 vectors to find neighbours, got 1"):
        KoLeoLoss()(torch.ones(1, 3))
