"""OpenAI CLIP's image tower from OpenAI's checkpoint file, on our own ViT.

Why not open_clip: importing it pulls in torchvision, ``torch._dynamo`` and transformers,
and its loader builds and randomly initialises the whole CLIP, text tower included, before
copying the weights in. A fresh process had ``clip`` ready in 4.7 s and 1.7 GB that way,
in 1.9 s and 0.87 GB this way (2 cores, benchmarks/model_load.py; a user measured 8-9 s
of a cold ``query -m clip`` in those two steps). The image tower is a pre-norm ViT with
CLIP's extras (``ln_pre``, QuickGELU, the CLS token after ``ln_post`` times ``proj``),
which :class:`VisionTransformer` already is for DreamSim's CLIP branches: only the
parameter names differ. The text tower is never built (``torch.jit.load`` reads the whole
archive; its text tensors are dropped at once).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from dreamsearch.errors import WeightsError
from dreamsearch.models.vit import VisionTransformer, ViTConfig, load_vit

#: OpenAI's names (under ``visual.``) → ours, as plain substring replacements.
_RENAMES = (
    ("transformer.resblocks.", "blocks."),
    ("conv1.", "patch_embed.proj."),
    ("class_embedding", "cls_token"),
    ("positional_embedding", "pos_embed"),
    ("ln_post.", "norm."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    ("attn.in_proj_", "attn.qkv."),
    ("attn.out_proj.", "attn.proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
)


def load_image_tower(path: Path, image_size: int) -> VisionTransformer:
    """The image tower of the OpenAI CLIP ViT checkpoint at ``path``, taking ``image_size``
    pixels square; a file that is not one is a :class:`WeightsError` naming it."""
    state = image_tower_state(read_checkpoint(path), path)
    try:
        cfg = ViTConfig.from_state(
            state,
            feature="cls_proj",
            norm_eps=1e-5,
            quick_gelu=True,
            ln_pre=True,
            patch_bias=False,
            image_size=image_size,
        )
        return load_vit(cfg, state)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: not an OpenAI CLIP ViT checkpoint ({exc})") from None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` by OpenAI's name. OpenAI publishes a TorchScript archive,
    which only ``torch.jit.load`` reads (its deprecation warning is hidden: there is no
    other reader); fine-tunes are plain state dicts, read with ``weights_only``, also as a
    training checkpoint's ``{"state_dict": {"module.…": …}}``."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):
        pass  # not TorchScript, or no file: torch.load below tells which
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing") from None
    except Exception as exc:  # torch.load raises many types for damaged files
        raise WeightsError(f"{path}: not an OpenAI CLIP checkpoint ({exc})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: not an OpenAI CLIP checkpoint (holds a {type(raw).__name__})")
    return raw


def image_tower_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an OpenAI CLIP state dict under our ViT's names, as
    float32 with the values open_clip's loader gave them. Empties ``state`` as it goes, so
    the text tower is freed first and each tensor read once it is converted: the peak RSS
    of a load stays that of reading the file (−330 MB for ViT-B/32).

    open_clip (which made every ``clip`` vector stored before) casts the convolution, linear
    and attention weights and ``proj`` to float16 before loading, and LayerNorms and the
    two embeddings not: rounding the same tensors keeps the vectors of a float32 fine-tune
    what they were. OpenAI's file holds exactly those tensors in float16, so for it this
    changes nothing."""
    if "visual.proj" not in state:
        raise WeightsError(f"{path}: not an OpenAI CLIP ViT checkpoint (no visual.proj)")
    for key in [k for k, v in state.items() if not k.startswith("visual.") or not isinstance(v, torch.Tensor)]:
        del state[key]
    tower = {}
    for key in list(state):
        value = state.pop(key)
        name = key.removeprefix("visual.")
        keeps_precision = ".ln_" in f".{name}" or name in ("class_embedding", "positional_embedding")
        value = value.float() if keeps_precision else value.half().float()
        for old, new in _RENAMES:
            name = name.replace(old, new)
        if name in ("cls_token", "pos_embed"):  # OpenAI's have no batch (and token) axis
            value = value.reshape(1, -1, value.shape[-1])
        tower[name] = value
    return tower
