"""DINOv2-style Vision Transformer built on timm's ``VisionTransformer``.

The backbone of UltraDINO is DINOv2's ``DinoVisionTransformer`` (see
``docs/recipe.md`` §2.1) with single-channel input and 4 register
tokens (docs/recipe.md §1.3). Here it is a thin subclass of :class:`timm.models.vision_transformer.VisionTransformer`,
so every block, attention, MLP, LayerScale and patch embedding is timm's own code and the
state-dict keys are timm's (docs/recipe.md §3):

``cls_token [1,1,D]``, ``reg_token [1,R,D]``, ``pos_embed [1,N,D]`` (patches only: timm
``no_embed_class=True``), ``mask_token [1,D]`` (ours, the iBOT mask embedding),
``patch_embed.proj.{weight [D,C,p,p], bias}``,
``blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}.*``, ``norm.*``.

Token layout, as in DINOv2 with registers: ``[CLS, registers, patches]``. Registers carry
no position embedding. DINOv2 adds ``pos_embed[:, 0]`` to the CLS token; in the timm layout
that constant is folded into ``cls_token`` (exactly what timm's DINOv2 converter does), which
gives the same function.

Differences from the DINOv2 code that are deliberate:

* Stochastic depth uses timm's per-sample ``DropPath`` at every rate. DINOv2 switches to
  "drop the residual of a random batch subset and rescale" above 0.1; that is an
  efficiency device with the same expectation (docs/recipe.md §2.1).
* Position-embedding interpolation for other grids is configurable: ``interpolate_offset=0.1,
  interpolate_antialias=False`` reproduces DINOv2 / UltraDINO training (docs/recipe.md §2.1; the default here),
  ``interpolate_offset=0, interpolate_antialias=True`` reproduces the official reg4 models and
  timm (``resample_abs_pos_embed``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, resample_abs_pos_embed
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ARCHS", "BeitBackbone", "DinoVisionTransformer", "arch_name_for", "build_vit", "resolve_block_indices"]

#: Canonical ViT sizes (docs/recipe.md §2.1: ViT-S D=384/6 heads, ViT-B D=768/12 heads, both 12 blocks).
#: ViT-Ti (D=192/3 heads) is the demo / test size; ViT-L matches UltraDINO's vitl16 config.
ARCHS: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}

#: Keyword arguments of :func:`build_vit` that may be passed through ``**overrides``.
_OVERRIDABLE = ("embed_dim", "depth", "num_heads", "mlp_ratio", "interpolate_offset", "interpolate_antialias")


def arch_name_for(embed_dim: int, depth: int, num_heads: int) -> str:
    """Name of the canonical arch with these dimensions, or ``"custom"``."""
    for name, dims in ARCHS.items():
        if dims == {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}:
            return name
    return "custom"


def _as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


class DinoVisionTransformer(VisionTransformer):
    """DINOv2 ViT (registers, LayerScale, mask token) on top of timm's ``VisionTransformer``.

    Args:
        img_size: image side the position embedding is stored for (224 → 14×14 grid at patch 16).
            Any other size divisible by ``patch_size`` is accepted at run time (``dynamic_img_size``):
            the position embedding is interpolated to the input grid.
        patch_size: square patch side in pixels.
        in_chans: input channels (1 for UltraDINO grey-scale, 3 for natural-image weights).
        embed_dim, depth, num_heads, mlp_ratio: transformer size (see :data:`ARCHS`).
        num_register_tokens: number of register tokens R (UltraDINO: 4, docs/recipe.md §1.3).
        init_values: LayerScale γ init (DINOv2: 1e-5, docs/recipe.md §2.1); ``None`` builds blocks without
            LayerScale (iBOT, plain timm ViTs).
        drop_path_rate: stochastic-depth rate (DINOv2 student: 0.3, docs/recipe.md §2.1).
        drop_path_uniform: ``True`` gives every block the same rate (DINOv2 default); ``False``
            the linear rule 0 → ``drop_path_rate`` over depth (UltraDINO segmentation, docs/recipe.md §1.5).
        interpolate_offset: DINOv2's interpolation kludge: the grid is scaled by
            ``(new + offset) / old`` instead of resized to ``new``. 0 means resize by size.
        interpolate_antialias: antialiasing for the bicubic position-embedding interpolation.
        arch: the arch name recorded in the checkpoint sidecar.

    Attributes:
        embed_dim, patch_size (int), num_register_tokens, n_blocks, in_chans, num_heads,
        init_values, img_size (int, int), arch.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        arch: str = "custom",
    ) -> None:
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        img_hw = _as_pair(img_size)
        if img_hw[0] % patch_size or img_hw[1] % patch_size:
            raise ValueError(f"img_size {img_hw} is not divisible by patch_size {patch_size}")
        super().__init__(
            img_size=img_hw,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,  # DINOv2: qkv, proj and ffn all have biases (docs/recipe.md §2.1)
            init_values=init_values,
            class_token=True,
            no_embed_class=True,
            reg_tokens=num_register_tokens,
            dynamic_img_size=True,
            # the uniform rule is applied below; timm only knows the linear rule
            drop_path_rate=0.0 if drop_path_uniform else drop_path_rate,
            weight_init="",  # trunc-normal(0.02) Linear + pos_embed, CLS/registers N(0, 1e-6) (docs/recipe.md §2.1)
        )
        if drop_path_uniform and drop_path_rate > 0:
            for block in self.blocks:
                block.drop_path1 = DropPath(drop_path_rate)
                block.drop_path2 = DropPath(drop_path_rate)
        # DINOv2 keeps the mask token at zero init; it is learned through the iBOT loss.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.num_register_tokens = num_register_tokens
        self.n_blocks = depth
        self.init_values = init_values
        self.img_size = img_hw
        self.drop_path_rate = drop_path_rate
        self.drop_path_uniform = drop_path_uniform
        self.interpolate_offset = float(interpolate_offset)
        self.interpolate_antialias = bool(interpolate_antialias)
        self.arch = arch

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """Constructor arguments that define the architecture (the checkpoint sidecar content)."""
        return {
            "arch": self.arch,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_register_tokens": self.num_register_tokens,
            "embed_dim": self.embed_dim,
            "depth": self.n_blocks,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "init_values": self.init_values,
            "img_size": self.img_size[0] if self.img_size[0] == self.img_size[1] else list(self.img_size),
            "interpolate_offset": self.interpolate_offset,
            "interpolate_antialias": self.interpolate_antialias,
        }

    def drop_path_rates(self) -> list[float]:
        """Per-block stochastic-depth rate actually in use (0 for blocks without DropPath)."""
        return [float(getattr(block.drop_path1, "drop_prob", 0.0)) for block in self.blocks]

    # ------------------------------------------------------------------ tokens
    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # a trace records no Python checks; keep it free of TracerWarnings
            return
        if x.ndim != 4:
            raise ValueError(f"expected an image batch [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {self.patch_size}")

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding for a ``grid_h × grid_w`` patch grid, shape ``[1, grid_h*grid_w, D]``."""
        old_h, old_w = self.patch_embed.grid_size
        if (grid_h, grid_w) == (old_h, old_w):
            return self.pos_embed
        if not self.interpolate_offset:
            return resample_abs_pos_embed(
                self.pos_embed,
                new_size=(grid_h, grid_w),
                old_size=(old_h, old_w),
                num_prefix_tokens=0,
                interpolation="bicubic",
                antialias=self.interpolate_antialias,
            )
        # DINOv2 / iBOT: scale factor (new + 0.1) / old, "to avoid floating point error" (dino#8)
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed.float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid,
            scale_factor=((grid_h + self.interpolate_offset) / old_h, (grid_w + self.interpolate_offset) / old_w),
            mode="bicubic",
            antialias=self.interpolate_antialias,
        )
        if tuple(grid.shape[-2:]) != (grid_h, grid_w):
            raise RuntimeError(
                f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, wanted {(grid_h, grid_w)}"
            )
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim).to(self.pos_embed.dtype)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, h, w, D] patch embeddings (timm dynamic_img_size keeps them NHWC)
        batch, grid_h, grid_w, dim = x.shape
        x = x.reshape(batch, grid_h * grid_w, dim) + self.interpolate_pos_embed(grid_h, grid_w)
        prefix = [self.cls_token.expand(batch, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        return self.pos_drop(torch.cat(prefix + [x], dim=1))

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Image ``[B, C, H, W]`` → tokens ``[B, 1+R+N, D]`` ready for the first block.

        ``masks`` (bool ``[B, N]`` or ``[B, h, w]``, True = masked) replaces the masked patch
        embeddings by :attr:`mask_token` *before* the position embedding is added (iBOT, docs/recipe.md §2.1).
        """
        self._check_input(x)
        x = self.patch_embed(x)  # [B, h, w, D]
        if masks is not None:
            batch, grid_h, grid_w, dim = x.shape
            if masks.dtype != torch.bool:
                raise TypeError(f"masks must be a bool tensor, got {masks.dtype}")
            if masks.numel() != batch * grid_h * grid_w or masks.shape[0] != batch:
                raise ValueError(
                    f"masks of shape {tuple(masks.shape)} do not match {batch} images of "
                    f"{grid_h}x{grid_w}={grid_h * grid_w} patches"
                )
            masks = masks.reshape(batch, grid_h, grid_w, 1)
            x = torch.where(masks, self.mask_token.to(x.dtype).reshape(1, 1, 1, dim), x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    # ----------------------------------------------------------------- forward
    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            from timm.models._manipulate import checkpoint_seq

            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_features(  # type: ignore[override]
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Run the backbone.

        Args:
            x: images ``[B, C, H, W]``, normalised; H and W divisible by ``patch_size``.
            masks: optional bool ``[B, N]`` (N = (H/p)·(W/p)), True where the patch is masked.

        Returns:
            dict with ``x_norm_clstoken [B, D]``, ``x_norm_regtokens [B, R, D]``,
            ``x_norm_patchtokens [B, N, D]`` (after the final LayerNorm), ``x_prenorm
            [B, 1+R+N, D]`` (before it) and ``masks`` (as given).
        """
        x = self._run_blocks(self.prepare_tokens(x, masks))
        x_norm = self.norm(x)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Normalised CLS token ``[B, D]``."""
        return self.forward_features(x)["x_norm_clstoken"]

    def _block_indices(self, indices: int | Sequence[int]) -> list[int]:
        return resolve_block_indices(indices, self.n_blocks)

    def get_intermediate_layers(  # type: ignore[override]
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] = 1,
        norm: bool = True,
        reshape: bool = True,
        return_class_token: bool = False,
    ) -> tuple:
        """Outputs of selected blocks (DINOv2 interface; registers are excluded).

        Args:
            x: images ``[B, C, H, W]``.
            indices: an int n = the last n blocks; a sequence = those 0-based block indices
                (negative values count from the end), returned in the order given.
            norm: pass each output through the final LayerNorm.
            reshape: patch tokens as ``[B, D, h, w]`` instead of ``[B, N, D]``.
            return_class_token: return ``(patch_tokens, cls_token [B, D])`` pairs.

        Returns:
            tuple with one entry per requested block.
        """
        take = self._block_indices(indices)
        batch, _, height, width = x.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        x = self.prepare_tokens(x)
        outputs: dict[int, torch.Tensor] = {}
        last = max(take)
        for index, block in enumerate(self.blocks):
            if index > last:
                break
            x = block(x)
            if index in take:
                outputs[index] = x
        return _split_intermediates(
            [outputs[i] for i in take],
            self.norm if norm else None,
            1 + self.num_register_tokens,
            (batch, grid_h, grid_w) if reshape else None,
            return_class_token,
        )


def resolve_block_indices(indices: int | Sequence[int], n_blocks: int) -> list[int]:
    """Turn DINOv2's ``n`` argument into a list of 0-based block indices."""
    if isinstance(indices, bool):
        raise TypeError("indices must be an int or a sequence of ints, not bool")
    if isinstance(indices, int):
        if not 1 <= indices <= n_blocks:
            raise ValueError(f"cannot take the last {indices} blocks of a {n_blocks}-block model")
        return list(range(n_blocks - indices, n_blocks))
    take = []
    for index in indices:
        index = int(index)
        if not -n_blocks <= index < n_blocks:
            raise ValueError(f"block index {index} out of range for a {n_blocks}-block model")
        take.append(index % n_blocks)
    if not take:
        raise ValueError("indices is empty")
    if len(set(take)) != len(take):
        raise ValueError(f"duplicate block indices in {list(indices)}")
    return take


def _split_intermediates(
    outputs: list[torch.Tensor],
    norm: nn.Module | None,
    first_patch: int,
    reshape_to: tuple[int, int, int] | None,
    return_class_token: bool,
) -> tuple:
    if norm is not None:
        outputs = [norm(out) for out in outputs]
    class_tokens = [out[:, 0] for out in outputs]
    patches = [out[:, first_patch:] for out in outputs]
    if reshape_to is not None:
        batch, grid_h, grid_w = reshape_to
        patches = [p.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
    if return_class_token:
        return tuple(zip(patches, class_tokens))
    return tuple(patches)


def build_vit(
    arch: str = "vit_small",
    patch_size: int = 16,
    in_chans: int = 1,
    num_register_tokens: int = 4,
    init_values: float | None = 1e-5,
    drop_path_rate: float = 0.0,
    drop_path_uniform: bool = True,
    img_size: int | Sequence[int] = 224,
    **overrides: Any,
) -> DinoVisionTransformer:
    """Build a :class:`DinoVisionTransformer` by arch name.

    Args:
        arch: one of :data:`ARCHS` (``vit_tiny`` 192/3, ``vit_small`` 384/6, ``vit_base`` 768/12,
            ``vit_large`` 1024/16; D/heads).
        patch_size, in_chans, num_register_tokens, init_values, drop_path_rate,
        drop_path_uniform, img_size: see :class:`DinoVisionTransformer`. Defaults are
            UltraDINO's (docs/recipe.md §1.3, §2.1): patch 16, 1 channel, 4 registers, LayerScale 1e-5.
        **overrides: ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
            ``interpolate_offset``, ``interpolate_antialias`` (e.g. ``depth=2`` for tests).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise TypeError(
            f"build_vit() got unexpected keyword argument(s) {unknown}; allowed overrides: {list(_OVERRIDABLE)}"
        )
    kwargs: dict[str, Any] = dict(ARCHS[arch])
    kwargs.update(overrides)
    model = DinoVisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_register_tokens=num_register_tokens,
        init_values=init_values,
        drop_path_rate=drop_path_rate,
        drop_path_uniform=drop_path_uniform,
        # a resized arch (e.g. depth=2 in tests) is not that arch any more
        arch=arch if all(kwargs[k] == v for k, v in ARCHS[arch].items()) else "custom",
        **kwargs,
    )
    logger.debug("built %s: %s", arch, model.config())
    return model


def grid_side(num_tokens: int) -> int | None:
    """Side of a square grid with ``num_tokens`` cells, or None if it is not a perfect square."""
    if num_tokens <= 0:
        return None
    side = math.isqrt(num_tokens)
    return side if side * side == num_tokens else None


class BeitBackbone(Beit):
    """timm ``Beit`` (BEiT / USFM layout) with the :class:`DinoVisionTransformer` interface.

    USFM (docs/recipe.md §3) is a BEiT/SimMIM ViT-B/16: qkv without bias plus ``q_bias``/``v_bias``,
    LayerScale ``gamma_1``/``gamma_2``, no absolute position embedding and one relative
    position bias table shared by all blocks (``rel_pos_bias.*``). That is timm's ``Beit`` with
    ``use_abs_pos_emb=False, use_shared_rel_pos_bias=True``; the state-dict keys are USFM's.

    The relative position bias is tied to the patch grid, so unlike the DINOv2 backbone this
    one only accepts ``img_size`` inputs. ``num_register_tokens`` is 0. ``mask_token`` is
    added so that ``forward_features(x, masks)`` behaves as in :class:`DinoVisionTransformer`
    (BEiT has no absolute position embedding by default, so substitution order is moot).
    Stochastic depth follows timm's linear rule unless ``drop_path_uniform``; the LayerNorm
    eps is timm's 1e-6, as in USFM's segmentation backbone.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        init_values: float | None = 0.1,
        use_abs_pos_emb: bool = False,
        use_rel_pos_bias: bool = False,
        use_shared_rel_pos_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        arch: str = "beit",
    ) -> None:
        img_hw = _as_pair(img_size)
        if img_hw[0] % patch_size or img_hw[1] % patch_size:
            raise ValueError(f"img_size {img_hw} is not divisible by patch_size {patch_size}")
        super().__init__(
            img_size=img_hw,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="",  # keeps the final `norm` (USFM's pretraining layout), no fc_norm
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            qkv_bias=True,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            init_values=init_values,
            use_abs_pos_emb=use_abs_pos_emb,
            use_rel_pos_bias=use_rel_pos_bias,
            use_shared_rel_pos_bias=use_shared_rel_pos_bias,
        )
        if drop_path_uniform and drop_path_rate > 0:
            for block in self.blocks:
                block.drop_path1 = DropPath(drop_path_rate)
                block.drop_path2 = DropPath(drop_path_rate)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_heads = num_heads
        self.num_register_tokens = 0
        self.n_blocks = depth
        self.init_values = init_values
        self.img_size = img_hw
        self.arch = arch

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"this BEiT/USFM backbone has a relative position bias for {self.img_size} inputs only, "
                f"got {tuple(x.shape[-2:])}; load it with img_size={x.shape[-1]} to resize the bias table"
            )

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Image ``[B, C, H, W]`` → tokens ``[B, 1+N, D]`` (mask token substituted where ``masks``)."""
        self._check_input(x)
        x = self.patch_embed(x)  # [B, N, D]
        if masks is not None:
            if masks.dtype != torch.bool or masks.shape[0] != x.shape[0] or masks.numel() != x.shape[0] * x.shape[1]:
                raise ValueError(
                    f"masks must be bool [B, N] = [{x.shape[0]}, {x.shape[1]}], got {masks.dtype} {tuple(masks.shape)}"
                )
            x = torch.where(masks.reshape(x.shape[0], x.shape[1], 1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def _shared_bias(self) -> torch.Tensor | None:
        return self.rel_pos_bias() if self.rel_pos_bias is not None else None

    def forward_features(  # type: ignore[override]
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Same contract as :meth:`DinoVisionTransformer.forward_features` (R = 0)."""
        x = self.prepare_tokens(x, masks)
        bias = self._shared_bias()
        for block in self.blocks:
            x = block(x, shared_rel_pos_bias=bias)
        x_norm = self.norm(x)
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:1],
            "x_norm_patchtokens": x_norm[:, 1:],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Normalised CLS token ``[B, D]``."""
        return self.forward_features(x)["x_norm_clstoken"]

    def get_intermediate_layers(  # type: ignore[override]
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] = 1,
        norm: bool = True,
        reshape: bool = True,
        return_class_token: bool = False,
    ) -> tuple:
        """Same contract as :meth:`DinoVisionTransformer.get_intermediate_layers`."""
        take = resolve_block_indices(indices, self.n_blocks)
        batch, _, height, width = x.shape
        x = self.prepare_tokens(x)
        bias = self._shared_bias()
        outputs: dict[int, torch.Tensor] = {}
        last = max(take)
        for index, block in enumerate(self.blocks):
            if index > last:
                break
            x = block(x, shared_rel_pos_bias=bias)
            if index in take:
                outputs[index] = x
        return _split_intermediates(
            [outputs[i] for i in take],
            self.norm if norm else None,
            1,
            (batch, height // self.patch_size, width // self.patch_size) if reshape else None,
            return_class_token,
        )
