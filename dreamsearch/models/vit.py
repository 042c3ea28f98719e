"""A compact ViT-B for inference: the one architecture behind every DreamSim branch.

Why our own instead of the official extractor: fused attention
(``scaled_dot_product_attention``), no forward hooks, LoRA merged into ``qkv``, and a last
block that only computes the CLS row (the only token DreamSim reads), which saves about
a twelfth of the work. Parameter names follow the DINO checkpoint layout so the official
files load directly; CLIP's ``ln_pre`` (stored as ``pos_drop`` in DreamSim's files) is
renamed on load, and OpenAI's own CLIP names are mapped in ``openai_clip.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dreamsearch.errors import checkpoint_problem

HEAD_DIM = 64  # every ViT we load has 64-wide heads (ViT-B: 768 / 12)


@dataclass(frozen=True)
class ViTConfig:
    """Shape and flavour of one backbone. ``feature`` says which vector leaves the model:
    ``"cls"`` (CLS token of the last block, before the final LayerNorm; DINO, DINOv2,
    SynCLR) or ``"cls_proj"`` (CLS after the final LayerNorm times ``proj``; CLIP)."""

    patch_size: int
    feature: str
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    quick_gelu: bool = False
    ln_pre: bool = False
    layer_scale: bool = False
    patch_bias: bool = True
    proj_dim: int = 0
    image_size: int = 224
    causal: bool = False  # each token attends only to those before it (CLIP's text tower)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], **flavour) -> ViTConfig:
        """The shape of the ViT whose weights ``state`` holds (under our parameter names),
        plus the ``flavour`` fields no tensor shape tells (``feature``, ``norm_eps``, ...).
        Raises ``KeyError`` or ``ValueError`` when ``state`` holds no such ViT."""
        conv = state["patch_embed.proj.weight"]
        width = conv.shape[0]
        return cls(
            patch_size=conv.shape[-1],
            width=width,
            depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
            heads=max(1, width // HEAD_DIM),
            mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
            layer_scale="blocks.0.ls1.gamma" in state,
            proj_dim=state["proj"].shape[1] if "proj" in state else 0,
            **flavour,
        )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def out_dim(self) -> int:
        return self.proj_dim if self.feature == "cls_proj" else self.width


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU() if quick_gelu else nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cls_only:
            q = q[:, :, :1]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(batch, q.shape[2], width))


class Block(nn.Module):
    """Pre-norm transformer block; with ``cls_only`` it returns just the CLS row."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads, cfg.causal)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.quick_gelu)
        self.ls1 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.ls2 = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        attended = self.ls1(self.attn(self.norm1(x), cls_only=cls_only))
        x = (x[:, :1] if cls_only else x) + attended
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """Maps normalised images ``[B, 3, S, S]`` to one feature vector each ``[B, out_dim]``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.ln_pre else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        if cfg.feature == "cls_proj":
            self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
            self.proj = nn.Parameter(torch.zeros(cfg.width, cfg.proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.ln_pre(x)
        for block in self.blocks[:-1]:
            x = block(x)
        cls = self.blocks[-1](x, cls_only=True)[:, 0]
        if self.cfg.feature == "cls_proj":
            return self.norm(cls) @ self.proj
        return cls


def load_vit(cfg: ViTConfig, state: Mapping[str, torch.Tensor]) -> VisionTransformer:
    """A :class:`VisionTransformer` whose parameters are the tensors of ``state`` (as float32).

    It is built on the ``meta`` device and takes the tensors as they are (no copy when
    they are float32 already), so no random initialisation runs for weights replaced at
    once: that costs 0.34 s per ViT-B on 2 cores, against 9 ms on ``meta``
    (benchmarks/model_load.py), three times over for the DreamSim ensemble.
    Raises ``ValueError`` with the first problem (a missing, unexpected or misshapen
    tensor) on one line."""
    with torch.device("meta"):
        vit = VisionTransformer(cfg)
    try:
        vit.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(checkpoint_problem(exc)) from None
    return vit


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a ``[1, 1 + M*M, C]`` position table to ``grid``×``grid`` patches.

    Reproduces DINO/DINOv2's ``interpolate_pos_encoding`` exactly (bicubic, no antialias,
    scale factor ``(grid + 0.1) / M``), done once at load time instead of every forward.
    """
    tokens = pos_embed.shape[1] - 1
    side = int(math.isqrt(tokens))
    if side * side != tokens:
        raise ValueError(f"position table of {tokens} patches is not square")
    if side == grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    scale = (grid + 0.1) / side
    patches = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if patches.shape[-2:] != (grid, grid):
        raise ValueError(f"resampling {side}x{side} positions gave {tuple(patches.shape[-2:])}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat((pos_embed[:, :1].float(), patches), dim=1).to(pos_embed.dtype)


def fold_norm_scales(network: nn.Module) -> nn.Module:
    """A copy of ``network`` in which every :class:`Block`'s LayerNorm scale and shift are
    folded into the Linear that reads the LayerNorm (``W(γ⊙n + β) + b = (W·diag γ)n + (Wβ + b)``):
    the same function in float32, but a channel that a large γ made an outlier in the
    activations is now an ordinary one there, and its size sits in the weights, which int8
    scales per output channel. Done before int8 quantisation (``openvino_backend``)."""
    import copy

    folded = copy.deepcopy(network)
    with torch.no_grad():
        for block in folded.modules():
            if isinstance(block, Block):
                _fold(block.norm1, block.attn.qkv)
                _fold(block.norm2, block.mlp.fc1)
    return folded


def _fold(norm: nn.LayerNorm, linear: nn.Linear) -> None:
    linear.bias.add_(linear.weight @ norm.bias)  # with the weights before scaling
    linear.weight *= norm.weight
    norm.weight.fill_(1.0)
    norm.bias.zero_()
