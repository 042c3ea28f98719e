"""An independent, deliberately plain DINOv2 ViT-B/14 (official parameter names), written
from the published facts: 518-pixel training size (37×37 position table), LayerScale on
both residual branches, LayerNorm eps 1e-6, exact GELU, and position resampling by
bicubic interpolation with scale factor ``(grid + 0.1) / 37`` and no antialiasing.

The official DINOv2 hub code cannot be fetched offline, so the test's stand-in hubconf
serves this module to the official DreamSim package instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_size = (14, 14)
        self.proj = nn.Conv2d(3, 768, kernel_size=14, stride=14)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((768,), 1.0))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(768, 3 * 768)
        self.proj = nn.Linear(768, 768)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, 12, 64).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * 64**-0.5, qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(768, 3072)
        self.fc2 = nn.Linear(3072, 768)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(768, eps=1e-6)
        self.attn = Attention()
        self.ls1 = LayerScale()
        self.norm2 = nn.LayerNorm(768, eps=1e-6)
        self.mlp = Mlp()
        self.ls2 = LayerScale()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 768))
        self.pos_embed = nn.Parameter(torch.zeros(1, 37 * 37 + 1, 768))
        self.mask_token = nn.Parameter(torch.zeros(1, 768))
        self.blocks = nn.ModuleList(Block() for _ in range(12))
        self.norm = nn.LayerNorm(768, eps=1e-6)

    def positions(self, height: int, width: int) -> torch.Tensor:
        rows, cols = height // 14, width // 14
        table = self.pos_embed[:, 1:].float()
        side = int(math.sqrt(table.shape[1]))
        grid = table.reshape(1, side, side, 768).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic", antialias=False
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, 768)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x):
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.positions(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]
