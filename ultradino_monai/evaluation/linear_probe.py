"""DINOv2 linear-probe protocol: a grid of linear heads on frozen backbone features.

Reference ``docs/recipe.md`` §2.6 (DINOv2 ``eval/linear.py``) and §1.4
("Linear probe", UltraDINO's Fetal Planes variant):

* the backbone is frozen and stays in eval mode (:class:`FrozenFeatureExtractor`; MONAI's
  ``SupervisedTrainer`` calls ``network.train()`` every iteration, reference
  ``docs/bundles.md`` §5, so the wrapper's ``train()`` keeps the backbone in eval);
* features: the layer-normed CLS tokens of the last ``n`` blocks (n in {1, 4}), optionally
  concatenated with the mean of the last block's layer-normed patch tokens (registers
  excluded), exactly DINOv2's ``create_linear_input``;
* 13 learning rates {1e-5 ... 0.1} x n_last_blocks {1, 4} x avgpool {False, True} = 52
  heads, each ``nn.Linear`` initialised N(0, 0.01) with zero bias, trained *together* on one
  backbone pass per batch with the *sum* of their cross-entropies, SGD momentum 0.9,
  weight decay 0, cosine schedule;
* the winner is the head with the best validation accuracy (DINOv2: strict ``>`` in grid
  order, so ties go to the earlier head); only it is reported on the test set.

The features of one image for every head fit in one tensor ``[K + 1, D]`` (K = the largest
n, 4): rows ``0..K-1`` are the CLS tokens of blocks ``depth-K .. depth-1``, row ``K`` the
average-pooled patch tokens of the last block. Each head slices what it needs, so one
backbone pass serves all 52 heads, and when there is no training augmentation the features
are computed once per image and cached on disk (:func:`cached_probe_features`).

UltraDINO differences, each a switch of the bundle (``bundles/classification/configs``):
learning rates are *not* scaled by ``batch * world / 256`` (DINOv2 scales them,
``scale_lr_with_batch``); a 5-epoch warmup precedes the cosine (DINOv2 has none); UltraDINO
also kept Mixup/CutMix and its augmentation running during the probe (``mixup_fn`` not
disabled), which requires image inputs (no feature cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from torch import nn

from ultradino_monai.utils.distributed import get_world_size, is_distributed
from ultradino_monai.utils.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "LEARNING_RATES",
    "N_LAST_BLOCKS",
    "AVGPOOL_CHOICES",
    "FEATURE_FORMAT_VERSION",
    "HeadSpec",
    "head_grid",
    "FrozenFeatureExtractor",
    "LinearHead",
    "LinearHeadGrid",
    "LinearProbeModel",
    "SummedCrossEntropy",
    "HeadGridMetric",
    "select_best_head",
    "all_gather_variable",
    "probe_optimizer",
    "state_dict_digest",
    "feature_cache_key",
    "extract_probe_features",
    "cached_probe_features",
    "FeatureDataset",
]

#: The 13 learning rates of the grid (docs/recipe.md §1.4 and §2.6).
LEARNING_RATES: tuple[float, ...] = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
#: Number of last blocks whose CLS tokens are concatenated (docs/recipe.md §2.6).
N_LAST_BLOCKS: tuple[int, ...] = (1, 4)
#: Whether the average-pooled patch tokens of the last block are appended (docs/recipe.md §2.6).
AVGPOOL_CHOICES: tuple[bool, ...] = (False, True)
#: Bump when the layout of cached features changes, so old caches are never reused.
FEATURE_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class HeadSpec:
    """One linear head of the grid: its name, learning rate and input features."""

    name: str
    lr: float
    n_last_blocks: int
    use_avgpool: bool


def _head_name(n_last_blocks: int, use_avgpool: bool, lr: float) -> str:
    # DINOv2's naming: classifier_{n}_blocks_avgpool_{bool}_lr_{lr:.5f} with '.' -> '_'
    return f"classifier_{n_last_blocks}_blocks_avgpool_{use_avgpool}_lr_{lr:.5f}".replace(".", "_")


def head_grid(
    learning_rates: Sequence[float] = LEARNING_RATES,
    n_last_blocks_list: Sequence[int] = N_LAST_BLOCKS,
    avgpool_choices: Sequence[bool] = AVGPOOL_CHOICES,
    lr_scale: float = 1.0,
) -> list[HeadSpec]:
    """All heads in DINOv2's order: n_last_blocks, then avgpool, then learning rate.

    Args:
        learning_rates: base learning rates (13 by default).
        n_last_blocks_list: e.g. ``(1, 4)``.
        avgpool_choices: e.g. ``(False, True)``.
        lr_scale: multiplies every rate (DINOv2 uses ``batch * world / 256``; UltraDINO 1).

    Raises:
        ValueError: empty choices, duplicate learning rates, or non-positive values.
    """
    rates = [float(lr) * float(lr_scale) for lr in learning_rates]
    if not rates or not n_last_blocks_list or not avgpool_choices:
        raise ValueError("learning_rates, n_last_blocks_list and avgpool_choices must all be non-empty")
    if any(lr <= 0 for lr in rates):
        raise ValueError(f"learning rates must be positive, got {rates}")
    if len({_head_name(1, False, lr) for lr in rates}) != len(rates):
        raise ValueError(f"learning rates must be distinct at 5 decimals, got {rates}")
    if any(int(n) < 1 for n in n_last_blocks_list):
        raise ValueError(f"n_last_blocks must be >= 1, got {list(n_last_blocks_list)}")
    return [
        HeadSpec(_head_name(int(n), bool(pool), lr), lr, int(n), bool(pool))
        for n in n_last_blocks_list
        for pool in avgpool_choices
        for lr in rates
    ]


# ------------------------------------------------------------------------ the features
class FrozenFeatureExtractor(nn.Module):
    """Frozen backbone -> probe features ``[B, K + 1, D]`` (see the module docstring).

    The backbone's parameters get ``requires_grad=False`` and the backbone stays in eval mode
    whatever ``train(mode)`` is called with (no dropout, drop-path or BatchNorm updates from a
    trainer that calls ``network.train()``). The forward runs under ``torch.no_grad`` and,
    with ``amp``, under autocast (DINOv2 used fp16 autocast; bf16 here); the output is float32.

    Args:
        backbone: a module with ``get_intermediate_layers(x, indices, norm, reshape,
            return_class_token)`` (:class:`~ultradino_monai.networks.vit.DinoVisionTransformer`).
        n_last_blocks: K, the most blocks any head uses (4).
        amp: autocast the backbone forward.
        amp_dtype: autocast dtype.
    """

    def __init__(
        self, backbone: nn.Module, n_last_blocks: int = 4, amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        depth = getattr(backbone, "n_blocks", None)
        if depth is not None and not 1 <= n_last_blocks <= depth:
            raise ValueError(f"n_last_blocks={n_last_blocks} but the backbone has {depth} blocks")
        self.backbone = backbone
        self.n_last_blocks = int(n_last_blocks)
        self.amp = bool(amp)
        self.amp_dtype = amp_dtype
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        super().train(mode)
        self.backbone.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` normalised images -> ``[B, K + 1, D]`` float32 features."""
        with torch.autocast(device_type=images.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.backbone.get_intermediate_layers(
                images, self.n_last_blocks, norm=True, reshape=False, return_class_token=True
            )
        class_tokens = [cls for _, cls in outputs]
        pooled = outputs[-1][0].float().mean(dim=1)  # last block's patch tokens, registers excluded
        return torch.stack([t.float() for t in class_tokens] + [pooled], dim=1)


class LinearHead(nn.Module):
    """One linear classifier on the probe features (DINOv2 ``LinearClassifier``).

    Input ``[B, K + 1, D]``; uses the CLS rows of the last ``n_last_blocks`` blocks,
    flattened in block order, plus row ``K`` (avgpool) when ``use_avgpool``.
    Output ``[B, num_classes]`` logits. Weight N(0, 0.01), bias 0 (docs/recipe.md §2.6).
    """

    def __init__(
        self, feature_dim: int, max_blocks: int, n_last_blocks: int, use_avgpool: bool, num_classes: int
    ) -> None:
        super().__init__()
        if not 1 <= n_last_blocks <= max_blocks:
            raise ValueError(f"n_last_blocks={n_last_blocks} must be in [1, {max_blocks}]")
        self.max_blocks = int(max_blocks)
        self.n_last_blocks = int(n_last_blocks)
        self.use_avgpool = bool(use_avgpool)
        in_dim = feature_dim * (n_last_blocks + int(use_avgpool))
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def linear_input(self, features: torch.Tensor) -> torch.Tensor:
        k = self.max_blocks
        parts = [features[:, k - self.n_last_blocks : k].flatten(1)]
        if self.use_avgpool:
            parts.append(features[:, k])
        return torch.cat(parts, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.linear_input(features))


class LinearHeadGrid(nn.Module):
    """All heads of :func:`head_grid`; ``forward(features) -> logits [num_heads, B, num_classes]`` in grid order.

    Every head is its own :class:`LinearHead` (its own optimiser group and learning rate), but
    the forward pass is batched: heads that read the same input (same n_last_blocks and
    avgpool) are evaluated with one ``einsum`` over their stacked weights, so the 52 heads cost
    a handful of kernels instead of hundreds. ``out[i]`` equals ``heads[specs[i].name](features)``.

    Args:
        specs: the heads (names must be unique).
        feature_dim: D.
        num_classes: number of classes.
        max_blocks: K, the row index of the avgpool features (default: the largest n of ``specs``).
    """

    def __init__(
        self, specs: Sequence[HeadSpec], feature_dim: int, num_classes: int, max_blocks: int | None = None
    ) -> None:
        super().__init__()
        if not specs:
            raise ValueError("the head grid is empty")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError("head names must be unique")
        self.specs = tuple(specs)
        self.max_blocks = int(max_blocks or max(spec.n_last_blocks for spec in specs))
        self.num_classes = int(num_classes)
        self.heads = nn.ModuleDict(
            {
                spec.name: LinearHead(feature_dim, self.max_blocks, spec.n_last_blocks, spec.use_avgpool, num_classes)
                for spec in specs
            }
        )
        groups: dict[tuple[int, bool], list[int]] = {}
        for index, spec in enumerate(self.specs):
            groups.setdefault((spec.n_last_blocks, spec.use_avgpool), []).append(index)
        self._groups = [(key, [self.specs[i].name for i in members]) for key, members in groups.items()]
        group_order = [i for members in groups.values() for i in members]
        # position of each grid head in the group-ordered output
        inverse = torch.empty(len(group_order), dtype=torch.long)
        inverse[torch.tensor(group_order)] = torch.arange(len(group_order))
        self.register_buffer("_grid_order", inverse, persistent=False)
        self._in_grid_order = group_order == list(range(len(group_order)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = []
        for _, names in self._groups:
            first = self.heads[names[0]]
            inputs = first.linear_input(features)  # [B, in]
            weight = torch.stack([self.heads[name].linear.weight for name in names])  # [h, C, in]
            bias = torch.stack([self.heads[name].linear.bias for name in names])  # [h, C]
            parts.append(torch.einsum("bi,hci->hbc", inputs, weight) + bias[:, None])
        logits = torch.cat(parts)
        return logits if self._in_grid_order else logits[self._grid_order]

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimiser group per head with that head's learning rate."""
        return [
            {"params": list(self.heads[spec.name].parameters()), "lr": spec.lr, "name": spec.name}
            for spec in self.specs
        ]


class LinearProbeModel(nn.Module):
    """Frozen extractor + head grid. Accepts images ``[B, C, H, W]`` or cached features ``[B, K + 1, D]``.

    With images the extractor runs first (one backbone pass for all heads); 3-D inputs are
    taken to be features computed by the same extractor (the feature cache).

    Output: logits ``[num_heads, B, num_classes]`` in grid order.
    """

    def __init__(self, grid: LinearHeadGrid, extractor: FrozenFeatureExtractor | None = None) -> None:
        super().__init__()
        if extractor is not None and extractor.n_last_blocks != grid.max_blocks:
            raise ValueError(
                f"the extractor returns {extractor.n_last_blocks} CLS rows but the grid expects {grid.max_blocks}"
            )
        self.extractor = extractor
        self.grid = grid

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim == 4:
            if self.extractor is None:
                raise ValueError("this probe has no backbone: pass cached features [B, K+1, D], not images")
            inputs = self.extractor(inputs)
        elif inputs.ndim != 3 or inputs.shape[1] != self.grid.max_blocks + 1:
            raise ValueError(
                f"expected images [B, C, H, W] or features [B, {self.grid.max_blocks + 1}, D], "
                f"got {tuple(inputs.shape)}"
            )
        return self.grid(inputs)


class SummedCrossEntropy(nn.Module):
    """Sum over heads of the batch-mean cross-entropy (DINOv2: ``sum(losses.values())``).

    ``logits``: ``[num_heads, B, C]``. ``targets``: class indices ``[B]`` (or ``[B, 1]``), or
    soft targets ``[B, C]`` (Mixup), for which the cross-entropy is
    ``-sum(target * log_softmax(logits))``.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3:
            raise ValueError(f"expected head logits [num_heads, B, C], got {tuple(logits.shape)}")
        heads, batch, classes = logits.shape
        logits = logits.float()
        if targets.is_floating_point() and targets.ndim == 2 and targets.shape[1] == classes:
            return (-(targets[None] * F.log_softmax(logits, dim=-1)).sum(dim=-1)).mean(dim=-1).sum()
        targets = targets.reshape(-1).long()
        return F.cross_entropy(logits.reshape(heads * batch, classes), targets.repeat(heads), reduction="sum") / batch


# ----------------------------------------------------------------------------- scoring
class HeadGridMetric(Metric):
    """Accuracy of every head of the grid over an epoch.

    After ``compute()`` (called by ignite at ``EPOCH_COMPLETED``) :attr:`results` holds
    ``{"accuracy": {head: acc}, "best_head": name, "labels": int64 [N],
    "predictions": {head: int64 [N]}}`` for selection and reporting.

    The metric's value is the best head's accuracy (validation: the selection criterion), or,
    with ``report_head``, the accuracy of the head it names (test: the head chosen on
    validation), so that the best *test* head is never what gets logged.

    Args:
        specs: the heads, in grid order (decides ties, as DINOv2 does).
        output_transform: engine output -> ``(logits dict, labels)``.
        report_head: optional callable returning the name of the head whose accuracy is the value.
    """

    def __init__(
        self,
        specs: Sequence[HeadSpec],
        output_transform: Callable = lambda output: (output["pred"], output["label"]),
        device: str | torch.device = "cpu",
        report_head: Callable[[], str] | None = None,
    ) -> None:
        self.specs = tuple(specs)
        self.report_head = report_head
        self.results: dict[str, Any] = {}
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._labels: list[torch.Tensor] = []
        self._predictions: dict[str, list[torch.Tensor]] = {spec.name: [] for spec in self.specs}

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, labels = output  # [num_heads, B, C], [B]
        if logits.ndim != 3 or logits.shape[0] != len(self.specs):
            raise ValueError(f"expected logits [{len(self.specs)}, B, C], got {tuple(logits.shape)}")
        self._labels.append(torch.as_tensor(labels).detach().reshape(-1).long().cpu())
        predictions = logits.detach().argmax(dim=-1).cpu()
        for spec, row in zip(self.specs, predictions):
            self._predictions[spec.name].append(row)

    def compute(self) -> float:
        if not self._labels:
            raise RuntimeError("HeadGridMetric needs at least one batch before compute()")
        labels = all_gather_variable(torch.cat(self._labels))
        predictions = {name: all_gather_variable(torch.cat(parts)) for name, parts in self._predictions.items()}
        accuracy = {name: float((p == labels).double().mean()) for name, p in predictions.items()}
        best = select_best_head(accuracy, self.specs)
        self.results = {"accuracy": accuracy, "best_head": best, "labels": labels, "predictions": predictions}
        return accuracy[self.report_head() if self.report_head is not None else best]


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0 (sizes may differ); identity without DDP.

    A validation ``DistributedSampler(even_divisible=False)`` gives the processes different
    numbers of samples; ``torch.distributed.all_gather`` needs equal shapes, so the rows are
    padded to the largest count and the padding is dropped again.
    """
    if not is_distributed():
        return tensor
    world = get_world_size()
    device = (
        tensor.device
        if torch.distributed.get_backend() != "nccl"
        else torch.device("cuda", torch.cuda.current_device())
    )
    local = tensor.to(device)
    count = torch.tensor([local.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    torch.distributed.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([part[: int(n)] for part, n in zip(gathered, counts)]).to(tensor.device)


def select_best_head(accuracy: Mapping[str, float], specs: Sequence[HeadSpec]) -> str:
    """Name of the head with the highest accuracy; ties go to the earlier head in grid order."""
    best_name, best_value = None, -1.0
    for spec in specs:
        if spec.name not in accuracy:
            raise KeyError(f"no accuracy for head {spec.name}")
        if accuracy[spec.name] > best_value:  # strict: DINOv2 keeps the first of equal heads
            best_name, best_value = spec.name, accuracy[spec.name]
    assert best_name is not None
    return best_name


def probe_optimizer(grid: LinearHeadGrid, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.SGD:
    """SGD, momentum 0.9, weight decay 0, one group per head at its own lr (docs/recipe.md §2.6)."""
    return torch.optim.SGD(grid.param_groups(), lr=grid.specs[0].lr, momentum=momentum, weight_decay=weight_decay)


# ---------------------------------------------------------------------- feature cache
def state_dict_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes): the weights' identity.

    Covers weights from any file, the pos-embed resampling done at load time and random
    initialisations alike.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _file_identity(path: str) -> list[Any]:
    stat = os.stat(path)
    return [path, stat.st_size, stat.st_mtime_ns]


def feature_cache_key(
    weights_digest: str,
    items: Sequence[Mapping[str, Any]],
    preprocessing: Mapping[str, Any],
    n_last_blocks: int,
    image_key: str = "image",
    label_key: str = "label",
) -> str:
    """sha256 naming a set of cached features.

    Mixes the backbone weights digest (:func:`state_dict_digest`), every image's path, size
    and modification time and its label (so an edited datalist, a replaced image or a
    relabelled item is never served stale features), the preprocessing description
    (spatial size, normalisation, channels...), K and :data:`FEATURE_FORMAT_VERSION`.
    """
    document = {
        "version": FEATURE_FORMAT_VERSION,
        "weights": weights_digest,
        "n_last_blocks": int(n_last_blocks),
        "preprocessing": dict(preprocessing),
        "items": [_file_identity(str(item[image_key])) + [item.get(label_key)] for item in items],
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


@torch.no_grad()
def extract_probe_features(
    extractor: FrozenFeatureExtractor,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One backbone pass over ``loader``: ``(features [N, K + 1, D] float32, labels [N] int64)`` on CPU."""
    extractor = extractor.to(device).eval()
    features, labels = [], []
    for batch in loader:
        images = batch[image_key]
        images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)  # drop MONAI meta
        features.append(extractor(images.to(device)).cpu())
        labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long().cpu())
    if not features:
        raise ValueError("the loader yielded no batches")
    return torch.cat(features), torch.cat(labels)


def cached_probe_features(
    extractor: FrozenFeatureExtractor,
    items: Sequence[Mapping[str, Any]],
    preprocessing: Callable,
    preprocessing_desc: Mapping[str, Any],
    cache_dir: str | os.PathLike | None,
    device: torch.device | str,
    batch_size: int = 64,
    num_workers: int = 0,
    weights_digest: str | None = None,
    name: str = "features",
) -> dict[str, Any]:
    """Probe features of ``items`` (absolute paths), from the disk cache when they are there.

    The file ``cache_dir/<name>-<key[:20]>.pt`` holds ``features``, ``labels``, ``images`` and
    the full ``key``; it is written atomically and read back with ``weights_only=True``.
    ``cache_dir=None`` disables the cache.

    Returns:
        ``{"features": [N, K+1, D], "labels": [N], "images": [...], "key": str, "cache_hit": bool}``.
    """
    from monai.data import DataLoader, Dataset

    if not items:
        raise ValueError(f"{name}: no items to embed")
    digest = weights_digest or state_dict_digest(extractor.backbone)
    key = feature_cache_key(digest, items, preprocessing_desc, extractor.n_last_blocks)
    images = [str(item["image"]) for item in items]
    path = Path(cache_dir) / f"{name}-{key[:20]}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key and stored.get("images") == images:
            logger.info("%s: %d cached probe features from %s", name, len(images), path)
            return {**stored, "cache_hit": True}
        logger.warning("%s: cache file %s does not match its key; recomputing", name, path)
    loader = DataLoader(
        Dataset([dict(item) for item in items], transform=preprocessing),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    features, labels = extract_probe_features(extractor, loader, device)
    record = {"features": features, "labels": labels, "images": images, "key": key}
    if path is not None:
        atomic_write(path, lambda temporary: torch.save(record, temporary))
        logger.info("%s: embedded %d images, cached in %s", name, len(images), path)
    return {**record, "cache_hit": False}


class FeatureDataset(torch.utils.data.Dataset):
    """``{"image": features[i] [K+1, D], "label": labels[i]}`` items over cached feature tensors."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.features[index], "label": self.labels[index]}
