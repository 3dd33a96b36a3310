"""The project's one metric implementation (docs/design.md contract 3).

Segmentation: **Dice pooled over the whole split** (docs/datasets.md §1.4;
UltraDINO's ``DinusIoUMetric``, docs/recipe.md §1.5). For every class c the intersection
I_c, the predicted area P_c and the label area L_c are summed over *all*
images of the split first, then

    Dice_c = 2 · ΣI_c / (ΣP_c + ΣL_c)

* ``foreground_mean``: nan-mean of Dice_c over classes 1..C-1; **the headline
  number** (UltraDINO's ``mfDice``).
* ``mean_with_background``: nan-mean over all classes incl. background
  (UltraDINO's ``mDice``, what its checkpoint selection used; docs/datasets.md §1.4).
* A class absent from both prediction and truth in the whole split has
  0/0: its Dice is NaN and it is left out of both means (nanmean), the same
  convention as mmseg's pooled metric. If every foreground class is absent the
  means are NaN.
* ``per_image_mean`` (secondary figure): for each image, the Dice of every
  foreground class present in that image's prediction *or* label (classes
  absent from both are excluded, not counted as 1 or 0), averaged over those
  classes; then averaged over images. Images with no foreground in either
  prediction or label are excluded (``per_image_count`` says how many counted).
  ``per_image_per_class`` is the per-class nan-mean over images (nnU-Net's
  per-case convention, docs/datasets.md §1.4), for comparison with ``nnUNetv2_evaluate_folder``.

Values are fractions in [0, 1]; reports multiply by 100
(:mod:`ultradino_monai.evaluation.aggregate`).

Pixels whose label equals ``ignore_index`` (255 by default, mmseg's padding
value) are left out of every count. Prediction values outside 0..C-1 and label
values other than 0..C-1 / ``ignore_index`` raise ``ValueError``.

Classification: :func:`confusion_matrix`, :func:`per_class_f1`,
:func:`macro_f1`, :func:`accuracy` are thin wrappers over scikit-learn's
``confusion_matrix``, ``f1_score`` and ``accuracy_score``; the wrappers add input
checks (indices in 0..C-1, ``[N, C]`` scores argmaxed) and always pass
``labels=range(num_classes)``. So ``macro_f1`` averages over *all*
``num_classes`` classes, ``f1_score(y, p, labels=range(num_classes),
average="macro", zero_division=0)``: a class with no support and no predictions
has undefined precision and recall and gets F1 = ``zero_division`` (0 by
default), so it pulls the macro mean down. This differs from sklearn's default
``labels=None``, which averages only over classes that occur in ``y`` or ``p``;
fixing the class set keeps scores of different runs comparable. sklearn refuses
empty input; here an empty set gives an all-zero confusion matrix and
``zero_division`` F1 (every class has TP + FP + FN = 0), and ``accuracy`` raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from sklearn import metrics as skm

logger = logging.getLogger(__name__)

__all__ = [
    "PooledDice",
    "PooledDiceMetric",
    "pooled_dice",
    "to_index_map",
    "confusion_matrix",
    "per_class_f1",
    "macro_f1",
    "accuracy",
]

ArrayLike = Any  # numpy array, torch tensor (incl. MONAI MetaTensor) or nested sequence


def _as_tensor(value: ArrayLike) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        # MetaTensor -> plain tensor, so later ops do not drag metadata along.
        return value.as_tensor() if hasattr(value, "as_tensor") else value
    return torch.as_tensor(np.asarray(value))


def to_index_map(value: ArrayLike, num_classes: int, batched: bool = True) -> torch.Tensor:
    """Turn a prediction or label into an integer index map.

    Accepted layouts (``batched=True``): ``[B, H, W]`` indices, ``[B, 1, H, W]``
    indices, ``[B, C, H, W]`` logits / probabilities / one-hot (argmax over C,
    with C == ``num_classes``). With ``batched=False`` (one decollated sample):
    ``[H, W]``, ``[1, H, W]`` or ``[C, H, W]``.

    Returns:
        int64 tensor ``[B, H, W]`` (``[H, W]`` when not batched).
    """
    tensor = _as_tensor(value)
    channel_dim = 1 if batched else 0
    spatial_ndim = 2
    if tensor.ndim == spatial_ndim + channel_dim:
        index = tensor
    elif tensor.ndim == spatial_ndim + channel_dim + 1:
        channels = tensor.shape[channel_dim]
        if channels == 1:
            index = tensor.squeeze(channel_dim)
        elif channels == num_classes:
            index = tensor.argmax(dim=channel_dim)
        else:
            raise ValueError(
                f"channel dimension {channels} is neither 1 (index map) nor num_classes={num_classes} "
                f"(logits / one-hot); shape {tuple(tensor.shape)}"
            )
    else:
        layout = "[B, H, W] / [B, 1, H, W] / [B, C, H, W]" if batched else "[H, W] / [1, H, W] / [C, H, W]"
        raise ValueError(f"expected {layout}, got shape {tuple(tensor.shape)}")
    if index.is_floating_point():
        rounded = index.round()
        if not torch.equal(rounded, index):
            raise ValueError("an index map holds non-integer values; pass logits with a class channel instead")
        index = rounded
    return index.long()


class PooledDice:
    """Accumulator for split-pooled Dice (module docstring), independent of any engine.

    Args:
        num_classes: C, including background (class 0).
        ignore_index: label value excluded from every count (``None``: no ignored value).

    State (all int64 / float64 sums, so states of several workers can be added):
    ``intersection``, ``pred_area``, ``label_area`` ``[C]``; per-image Dice sums
    ``image_class_dice_sum`` / ``image_class_count`` ``[C]``; ``image_mean_sum``,
    ``image_mean_count``, ``num_images`` (scalars in ``[3]``).

    Example::

        dice = PooledDice(num_classes=5)
        for pred, label in loader:          # [B, H, W] ints (or [B, C, H, W] logits)
            dice.update(pred, label)
        dice.compute()["foreground_mean"]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index (0..{num_classes - 1})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.intersection = torch.zeros(c, dtype=torch.int64)
        self.pred_area = torch.zeros(c, dtype=torch.int64)
        self.label_area = torch.zeros(c, dtype=torch.int64)
        self.image_class_dice_sum = torch.zeros(c, dtype=torch.float64)
        self.image_class_count = torch.zeros(c, dtype=torch.int64)
        # [sum of per-image means, number of images with a per-image mean, number of images]
        self.image_totals = torch.zeros(3, dtype=torch.float64)

    def state(self) -> dict[str, torch.Tensor]:
        """The sums, as a dict of tensors (add two states element-wise to merge workers)."""
        return {
            "intersection": self.intersection,
            "pred_area": self.pred_area,
            "label_area": self.label_area,
            "image_class_dice_sum": self.image_class_dice_sum,
            "image_class_count": self.image_class_count,
            "image_totals": self.image_totals,
        }

    def update(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Add a batch.

        Args:
            pred: ``[B, H, W]`` / ``[B, 1, H, W]`` class indices in 0..C-1, or
                ``[B, C, H, W]`` logits (argmax taken).
            label: ``[B, H, W]`` / ``[B, 1, H, W]`` indices (0..C-1 or ``ignore_index``),
                or ``[B, C, H, W]`` one-hot.
        """
        self._add(to_index_map(pred, self.num_classes), to_index_map(label, self.num_classes))

    def update_sample(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Add one un-batched sample: ``[H, W]``, ``[1, H, W]`` or ``[C, H, W]`` each."""
        pred_map = to_index_map(pred, self.num_classes, batched=False)
        label_map = to_index_map(label, self.num_classes, batched=False)
        self._add(pred_map.unsqueeze(0), label_map.unsqueeze(0))

    def _add(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        c = self.num_classes
        # Count on the prediction's device (GPU during evaluation); only the C x C tables move to the CPU.
        label = label.to(pred.device)
        valid = torch.ones_like(label, dtype=torch.bool) if self.ignore_index is None else label != self.ignore_index
        bad_label = valid & ((label < 0) | (label >= c))
        if bad_label.any():
            values = torch.unique(label[bad_label]).tolist()
            raise ValueError(f"label values {values} outside 0..{c - 1} (ignore_index={self.ignore_index})")
        bad_pred = valid & ((pred < 0) | (pred >= c))
        if bad_pred.any():
            raise ValueError(f"prediction values {torch.unique(pred[bad_pred]).tolist()} outside 0..{c - 1}")
        batch = pred.shape[0]
        # One bincount gives every image's C x C confusion matrix: index = image*C*C + pred*C + label.
        flat_valid = valid.reshape(batch, -1)
        codes = (pred.reshape(batch, -1) * c + label.reshape(batch, -1)).clamp(0, c * c - 1)
        offsets = torch.arange(batch, device=pred.device).unsqueeze(1) * (c * c)
        counts = torch.bincount((codes + offsets)[flat_valid], minlength=batch * c * c).reshape(batch, c, c).cpu()
        intersection = counts.diagonal(dim1=1, dim2=2)  # [B, C]
        pred_area = counts.sum(dim=2)  # rows are predictions
        label_area = counts.sum(dim=1)
        self.intersection += intersection.sum(0)
        self.pred_area += pred_area.sum(0)
        self.label_area += label_area.sum(0)

        denominator = (pred_area + label_area).double()
        present = denominator > 0
        image_dice = torch.where(present, 2 * intersection.double() / denominator.clamp(min=1), torch.nan)
        self.image_class_dice_sum += torch.nan_to_num(image_dice, nan=0.0).sum(0)
        self.image_class_count += present.sum(0)
        foreground = image_dice[:, 1:]
        has_foreground = present[:, 1:].any(dim=1)
        image_means = torch.nanmean(foreground[has_foreground], dim=1) if has_foreground.any() else torch.zeros(0)
        self.image_totals += torch.tensor(
            [image_means.sum().item(), float(has_foreground.sum()), float(batch)], dtype=torch.float64
        )

    def compute(self) -> dict[str, Any]:
        """Scores from the sums so far; see :func:`pooled_dice` for the keys."""
        return pooled_dice(self.state())


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def pooled_dice(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Turn accumulated sums (:meth:`PooledDice.state`) into scores.

    Returns:
        ``per_class``: list of C Dice values (NaN where the class is absent from
        prediction and truth in the whole split); ``foreground_mean``;
        ``mean_with_background``; ``per_image_mean``; ``per_image_per_class``
        (C values); ``per_image_count`` (images that had foreground);
        ``num_images``; ``intersection`` / ``pred_area`` / ``label_area`` (C ints,
        for auditing).
    """
    intersection = state["intersection"].double()
    denominator = (state["pred_area"] + state["label_area"]).double()
    per_class = [
        float(2 * i / d) if d > 0 else float("nan") for i, d in zip(intersection.tolist(), denominator.tolist())
    ]
    counts = state["image_class_count"].tolist()
    per_image_per_class = [
        float(s / n) if n > 0 else float("nan") for s, n in zip(state["image_class_dice_sum"].tolist(), counts)
    ]
    image_mean_sum, image_mean_count, num_images = state["image_totals"].tolist()
    return {
        "per_class": per_class,
        "foreground_mean": _nanmean(per_class[1:]),
        "mean_with_background": _nanmean(per_class),
        "per_image_mean": float(image_mean_sum / image_mean_count) if image_mean_count else float("nan"),
        "per_image_per_class": per_image_per_class,
        "per_image_count": int(image_mean_count),
        "num_images": int(num_images),
        "intersection": state["intersection"].tolist(),
        "pred_area": state["pred_area"].tolist(),
        "label_area": state["label_area"].tolist(),
    }


def _is_sample_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and not isinstance(value, torch.Tensor)


class PooledDiceMetric(Metric):
    """ignite / MONAI metric wrapping :class:`PooledDice`.

    ``output_transform`` must return ``(pred, label)``. Either may be a batched
    tensor (``[B, C, H, W]`` logits, ``[B, 1, H, W]`` or ``[B, H, W]`` indices) or
    a list of per-sample tensors (``[C, H, W]`` / ``[1, H, W]`` / ``[H, W]``), which
    is what ``monai.handlers.from_engine(["pred", "label"])`` returns for a
    MONAI evaluator's decollated ``engine.state.output``. ignite itself unrolls
    such lists into one-sample batches; with ``skip_unrolling`` the lists reach
    :meth:`update` and are handled there::

        from monai.handlers import from_engine
        metric = PooledDiceMetric(num_classes=5, output_transform=from_engine(["pred", "label"]))
        evaluator = SupervisedEvaluator(..., key_val_metric={"val_dice": metric})

    The default ``output_transform`` takes ``engine.state.output`` as a ``(pred,
    label)`` pair (ignite's convention) or, when it is a dict or a list of dicts,
    the ``"pred"`` / ``"label"`` entries (MONAI's convention).

    ``compute`` returns the float named by ``summary`` (default
    ``"foreground_mean"``), so the metric can drive MONAI's best-checkpoint
    selection; the full dict of :func:`pooled_dice` is kept in
    :attr:`last_result` and, when attached, in
    ``engine.state.metric_details[name]`` (MONAI's place for metric details).
    With ``summary=None`` ``compute`` returns the dict itself.

    In distributed runs the sums are all-reduced before the scores are computed.

    Args:
        num_classes: C including background.
        output_transform: engine output -> ``(pred, label)``.
        ignore_index: label value left out of every count.
        summary: key of the returned scalar, or ``None`` for the whole dict.
        device: ignite's metric device (accumulation itself runs on CPU).
        skip_unrolling: passed to ignite (``True``: lists of samples reach :meth:`update` as lists).
    """

    def __init__(
        self,
        num_classes: int,
        output_transform: Callable[[Any], Any] | None = None,
        ignore_index: int | None = 255,
        summary: str | None = "foreground_mean",
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ):
        self._dice = PooledDice(num_classes, ignore_index)
        self.summary = summary
        self.last_result: dict[str, Any] | None = None
        super().__init__(
            output_transform=output_transform or _default_output_transform,
            device=device,
            skip_unrolling=skip_unrolling,
        )

    @reinit__is_reduced
    def reset(self) -> None:
        self._dice.reset()

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            raise ValueError("PooledDiceMetric expects output_transform to return (pred, label)")
        pred, label = output
        if _is_sample_list(pred) != _is_sample_list(label):
            raise ValueError("pred and label must both be batched tensors or both lists of samples")
        if _is_sample_list(pred):
            if len(pred) != len(label):
                raise ValueError(f"{len(pred)} predictions but {len(label)} labels")
            for one_pred, one_label in zip(pred, label):
                self._dice.update_sample(one_pred, one_label)
        else:
            self._dice.update(pred, label)

    def compute(self) -> Any:
        state = {name: value.clone() for name, value in self._dice.state().items()}
        if idist.get_world_size() > 1:
            state = {name: idist.all_reduce(value) for name, value in state.items()}
        if int(state["image_totals"][2].item()) == 0:
            raise NotComputableError("PooledDiceMetric needs at least one update before compute")
        self.last_result = pooled_dice(state)
        if self.summary is None:
            return self.last_result
        if self.summary not in self.last_result:
            raise KeyError(f"summary {self.summary!r} is not one of {sorted(self.last_result)}")
        return self.last_result[self.summary]

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        details = getattr(engine.state, "metric_details", None)
        if details is None:
            details = {}
            engine.state.metric_details = details
        details[name] = self.last_result


def _default_output_transform(output: Any) -> tuple[Any, Any]:
    if isinstance(output, Mapping):
        return output["pred"], output["label"]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        return [sample["pred"] for sample in output], [sample["label"] for sample in output]
    return output[0], output[1]


# ----------------------------------------------------------------------------- classification


def _labels_1d(value: ArrayLike, num_classes: int, what: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 2:
        if array.shape[1] != num_classes:
            raise ValueError(f"{what}: scores of shape {array.shape} do not have num_classes={num_classes} columns")
        array = array.argmax(axis=1)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected [N] class indices or [N, C] scores, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{what}: class indices must be integers")
        array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{what}: class indices must lie in 0..{num_classes - 1}, got {array.min()}..{array.max()}")
    return array.astype(np.int64)


def _pair_1d(pred: ArrayLike, target: ArrayLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred_1d = _labels_1d(pred, num_classes, "pred")
    target_1d = _labels_1d(target, num_classes, "target")
    if pred_1d.shape != target_1d.shape:
        raise ValueError(f"pred has {pred_1d.shape[0]} entries, target {target_1d.shape[0]}")
    return pred_1d, target_1d


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = true class, columns = predicted class (sklearn's layout).

    ``sklearn.metrics.confusion_matrix(target, pred, labels=range(C))``, so classes that never occur
    still get their row and column. Empty input gives all zeros (sklearn refuses empty arrays).

    Args:
        pred: ``[N]`` class indices or ``[N, C]`` scores (argmax taken).
        target: ``[N]`` class indices.
    """
    pred_1d, target_1d = _pair_1d(pred, target, num_classes)
    if target_1d.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    matrix = skm.confusion_matrix(target_1d, pred_1d, labels=np.arange(num_classes))
    return matrix.astype(np.int64, copy=False)


def per_class_f1(pred: ArrayLike, target: ArrayLike, num_classes: int, zero_division: float = 0.0) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) per class, ``[C]`` float64 in [0, 1].

    ``sklearn.metrics.f1_score(target, pred, labels=range(C), average=None,
    zero_division=zero_division)``. A class with TP + FP + FN = 0 (no support and never
    predicted) gets ``zero_division``: 0 (default), 1 or NaN, the values sklearn accepts
    (others raise ``ValueError``). Empty input gives ``zero_division`` for every class
    (sklearn refuses empty arrays). Needs scikit-learn >= 1.4: 1.3 gave ``zero_division`` to
    every class with TP = 0, even when FP + FN > 0 (scikit-learn issue #26965, fixed by #27577).
    """
    pred_1d, target_1d = _pair_1d(pred, target, num_classes)
    if target_1d.size == 0:
        return np.full(num_classes, float(zero_division), dtype=np.float64)
    scores = skm.f1_score(target_1d, pred_1d, labels=np.arange(num_classes), average=None, zero_division=zero_division)
    return np.asarray(scores, dtype=np.float64)


def macro_f1(pred: ArrayLike, target: ArrayLike, num_classes: int, zero_division: float = 0.0) -> float:
    """Unweighted mean of :func:`per_class_f1` over all ``num_classes`` classes (module docstring).

    ``sklearn.metrics.f1_score(..., labels=range(C), average="macro", zero_division=...)``.
    With ``zero_division=nan`` the classes with TP + FP + FN = 0 are left out of the mean
    (sklearn's meaning of NaN); the mean of NaN-free classes is returned.
    """
    pred_1d, target_1d = _pair_1d(pred, target, num_classes)
    if target_1d.size == 0:
        return float(zero_division)
    return float(
        skm.f1_score(target_1d, pred_1d, labels=np.arange(num_classes), average="macro", zero_division=zero_division)
    )


def accuracy(pred: ArrayLike, target: ArrayLike, num_classes: int | None = None) -> float:
    """Fraction of correct predictions in [0, 1] (``sklearn.metrics.accuracy_score``).

    ``pred`` may be ``[N]`` indices or ``[N, C]`` scores (argmax taken). Without
    ``num_classes`` the class count is ``C`` of the scores, else the largest index + 1 (so only
    negative indices are rejected). Empty input raises ``ValueError``.
    """
    target_array = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    pred_array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if num_classes:
        classes = num_classes
    elif pred_array.ndim == 2:
        classes = pred_array.shape[1]
    else:
        classes = int(max(pred_array.max(initial=0), target_array.max(initial=0))) + 1
    pred_1d, target_1d = _pair_1d(pred_array, target_array, classes)
    if target_1d.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(skm.accuracy_score(target_1d, pred_1d))
