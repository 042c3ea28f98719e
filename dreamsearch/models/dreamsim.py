"""DreamSim from the official checkpoint files, without the official runtime.

What the official ``embed(normalize_embeds=True)`` computes, per image: for each branch,
normalise with the branch's mean/std, run the ViT, take its feature (DINO-style: CLS of
the last block before the final LayerNorm; CLIP-style: CLS after it, times ``proj``);
concatenate, subtract the per-sample mean, L2-normalise. LoRA adapters touch only
``attn.qkv``; we fold ``scale · B·A`` into the qkv weight once at load time.

Backbone shapes (width, depth, patch, projection) are read from the checkpoint, so a
small random checkpoint in the official layout runs through exactly this code in tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from torch import nn

from dreamsearch.errors import WeightsError, checkpoint_problem
from dreamsearch.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Normalized,
    TorchEmbedder,
)
from dreamsearch.models.registry import BACKBONES, ModelSpec, lora_dir
from dreamsearch.models.vit import Block, VisionTransformer, ViTConfig, load_vit, resample_pos_embed

IMAGE_SIZE = 224


class DreamSimNetwork(nn.Module):
    """Images in [0, 1] → concatenated branch features (each branch normalising its input
    its own way) with their mean removed.
    (:class:`TorchEmbedder` does the final L2 normalisation.)"""

    def __init__(self, branches: list[Normalized]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat([branch(x) for branch in self.branches], dim=-1)
        return features - features.mean(dim=-1, keepdim=True)


def build(spec: ModelSpec, root: Path, device: torch.device) -> TorchEmbedder:
    """Load the backbones and LoRA adapter of ``spec`` from ``root`` (official layout)."""
    adapter = _read_adapter(root / lora_dir(spec.dreamsim_type))
    branches, dim = [], 0
    for index, name in enumerate(spec.branches):
        vit = load_backbone(name, root / BACKBONES[name].checkpoint)
        dim += vit.cfg.out_dim
        merge_lora(vit, adapter, index)
        clip_like = "clip" in name
        branches.append(
            Normalized(vit, *((OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if clip_like else (IMAGENET_MEAN, IMAGENET_STD)))
        )
    if adapter.unused:
        raise WeightsError(f"{adapter.path}: unexpected adapter tensors {sorted(adapter.unused)[:3]}")
    network = DreamSimNetwork(branches)
    return TorchEmbedder(spec.name, network, dim, spec.preprocess(), device)


def load_backbone(branch: str, path: Path) -> VisionTransformer:
    """Build the ViT of ``branch`` with the weights in ``path`` (the official file)."""
    state = _backbone_state(branch, _torch_load(path))
    cfg = _config_from_state(branch, state, path)
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.grid)
    if cfg.feature == "cls":
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    state.pop("mask_token", None)
    try:
        return load_vit(cfg, state)
    except ValueError as exc:
        raise WeightsError(f"{path}: not a {branch} checkpoint ({exc})") from None


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing") from None
    except Exception as exc:  # torch.load raises many types for damaged files
        raise WeightsError(f"{path}: cannot read checkpoint ({checkpoint_problem(exc)})") from None


def _backbone_state(branch: str, raw: dict) -> dict[str, torch.Tensor]:
    """Undo each official file's wrapping: ``state_dict`` + ``proj`` (CLIP), ``model`` with a
    ``module.visual.`` prefix (SynCLR), or a bare state dict (DINO, DINOv2)."""
    if "clip" in branch:
        state = dict(raw["state_dict"])
        renamed = {k.replace("pos_drop.", "ln_pre.", 1): v for k, v in state.items()}
        return renamed
    if branch.startswith("synclr"):
        prefix = "module.visual."
        return {k[len(prefix) :]: v for k, v in raw["model"].items() if k.startswith(prefix)}
    return dict(raw)


def _config_from_state(branch: str, state: dict[str, torch.Tensor], path: Path) -> ViTConfig:
    clip_like = "clip" in branch
    try:
        return ViTConfig.from_state(
            state,
            feature="cls_proj" if clip_like else "cls",
            norm_eps=1e-5 if clip_like else 1e-6,
            quick_gelu=branch.startswith("clip"),
            ln_pre=clip_like,
            image_size=IMAGE_SIZE,
        )
    except (KeyError, ValueError):
        raise WeightsError(f"{path}: not a ViT checkpoint in the DreamSim layout") from None


class _Adapter:
    """LoRA tensors of one adapter folder, consumed branch by branch."""

    def __init__(self, path: Path, scale: float, tensors: dict[str, torch.Tensor]) -> None:
        self.path, self.scale, self.tensors = path, scale, tensors
        self.unused = set(tensors)

    def take(self, key: str) -> torch.Tensor:
        self.unused.discard(key)
        return self.tensors[key]


def _read_adapter(folder: Path) -> _Adapter:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{folder / 'adapter_config.json'}: unreadable LoRA config ({exc})") from None
    targets = config.get("target_modules") or []
    if set(targets) - {"qkv"}:
        raise WeightsError(f"{folder}: LoRA on {targets} is not the DreamSim layout (qkv only)")
    scale = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / "adapter_model.safetensors"))
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"{folder / 'adapter_model.safetensors'}: unreadable ({exc})") from None
    return _Adapter(folder, scale, tensors)


@torch.no_grad()
def merge_lora(vit: VisionTransformer, adapter: _Adapter, branch_index: int) -> None:
    """Fold the adapter's ``qkv`` updates for branch ``branch_index`` into ``vit``:
    ``W ← W + scale · B @ A`` (what peft computes on the fly, done once)."""
    prefix = f"base_model.model.extractor_list.{branch_index}.model.blocks"
    for number, block in enumerate(vit.blocks):
        key = f"{prefix}.{number}.attn.qkv"
        try:
            a = adapter.take(f"{key}.lora_A.weight").double()
            b = adapter.take(f"{key}.lora_B.weight").double()
        except KeyError:
            raise WeightsError(f"{adapter.path}: no LoRA weights for {key}") from None
        weight = cast(Block, block).attn.qkv.weight
        weight.copy_((weight.double() + adapter.scale * (b @ a)).to(weight.dtype))
