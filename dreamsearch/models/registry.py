"""The named models dreamsearch knows, and which weight files each one reads.

This module imports nothing heavy: ``dreamsearch models list`` and ``--help`` use it.
File paths follow the official DreamSim cache layout, so a ``cache_dir`` made by the
official package works as a weights directory unchanged.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dreamsearch.errors import DreamsearchError

if TYPE_CHECKING:  # pragma: no cover
    from dreamsearch.images import Preprocess

RELEASES = "https://github.com/ssundaram21/dreamsim/releases/download"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"
OPENAI_CLIP_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
OPENAI_CLIP_URL = f"https://openaipublic.azureedge.net/clip/models/{OPENAI_CLIP_SHA256}/ViT-B-32.pt"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


@dataclass(frozen=True)
class WeightFile:
    """One file a model reads: where it lives under the weights directory and where
    ``fetch`` gets it (a release zip that contains it, or the file itself)."""

    path: str
    url: str
    sha256_prefix: str = ""

    @property
    def in_archive(self) -> bool:
        return self.url.endswith(".zip")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its output size, parts and weight files, and how to build it."""

    name: str
    dim: int
    branches: tuple[str, ...]
    files: tuple[WeightFile, ...]
    builder: str
    dreamsim_type: str = ""
    #: ``duplicates``' default --max-distance (docs/duplicates.md says how it was chosen).
    duplicate_distance: float = 0.05
    #: Input recipe (``dreamsearch.images.Preprocess``): squash to ``input_size`` when
    #: ``resize`` is 0 (DreamSim), else short side to ``resize`` and a central crop.
    #: ``resample`` is a PIL filter number (3 bicubic, 2 bilinear): no PIL import here.
    input_size: int = 224
    resize: int = 0
    resample: int = 3
    #: How to build its text tower (``module:function``), for a model that has one: text
    #: queries search its vectors (docs/search.md).
    text_builder: str = ""

    def preprocess(self) -> Preprocess:
        """The recipe decode threads apply before the model is even loaded."""
        from dreamsearch.images import Preprocess

        return Preprocess(self.input_size, self.resize, self.resample)


@dataclass(frozen=True)
class Backbone:
    """A DreamSim branch: its pretrained checkpoint and the size of its feature."""

    checkpoint: str
    url: str
    dim: int


def _release_zip(tag: str, dreamsim_type: str) -> str:
    return f"{RELEASES}/{tag}/dreamsim_{dreamsim_type}_checkpoint.zip"


BACKBONES: dict[str, Backbone] = {
    "dino_vitb16": Backbone("checkpoints/dino_vitbase16_pretrain.pth", DINO_URL, 768),
    "dinov2_vitb14": Backbone("checkpoints/dinov2_vitb14_pretrain.pth", DINOV2_URL, 768),
    "clip_vitb16": Backbone("clip_vitb16_pretrain.pth.tar", "", 512),
    "open_clip_vitb16": Backbone("open_clip_vitb16_pretrain.pth.tar", "", 512),
    "clip_vitb32": Backbone("clip_vitb32_pretrain.pth.tar", "", 512),
    "open_clip_vitb32": Backbone("open_clip_vitb32_pretrain.pth.tar", "", 512),
    "synclr_vitb16": Backbone("synclr_vit_b_16.pth", "", 768),
}

# name -> (official dreamsim_type, branches in concatenation order, release tag)
_DREAMSIM_TYPES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "dreamsim": ("ensemble", ("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), "v0.2.0-checkpoints"),
    "dreamsim-dino": ("dino_vitb16", ("dino_vitb16",), "v0.2.0-checkpoints"),
    "dreamsim-clip": ("clip_vitb32", ("clip_vitb32",), "v0.2.0-checkpoints"),
    "dreamsim-open-clip": ("open_clip_vitb32", ("open_clip_vitb32",), "v0.2.0-checkpoints"),
    "dreamsim-dinov2": ("dinov2_vitb14", ("dinov2_vitb14",), "v0.2.1-checkpoints"),
    "dreamsim-synclr": ("synclr_vitb16", ("synclr_vitb16",), "v0.2.1-checkpoints"),
}


def lora_dir(dreamsim_type: str) -> str:
    """Folder of the LoRA adapter inside an official cache directory."""
    tag = "ensemble_" if dreamsim_type == "ensemble" else f"{dreamsim_type}_single_"
    return f"{tag}lora"


def _dreamsim_spec(name: str, dreamsim_type: str, branches: tuple[str, ...], tag: str) -> ModelSpec:
    archive = _release_zip(tag, dreamsim_type)
    adapter = lora_dir(dreamsim_type)
    files = [
        WeightFile(f"{adapter}/adapter_config.json", archive),
        WeightFile(f"{adapter}/adapter_model.safetensors", archive),
    ]
    for branch in branches:
        backbone = BACKBONES[branch]
        files.append(WeightFile(backbone.checkpoint, backbone.url or archive))
    return ModelSpec(
        name=name,
        dim=sum(BACKBONES[b].dim for b in branches),
        branches=branches,
        files=tuple(files),
        builder="dreamsearch.models.dreamsim:build",
        dreamsim_type=dreamsim_type,
    )


MODELS: dict[str, ModelSpec] = {name: _dreamsim_spec(name, *entry) for name, entry in _DREAMSIM_TYPES.items()}
MODELS["clip"] = ModelSpec(
    name="clip",
    dim=512,
    branches=("openai_clip_vitb32",),
    files=(WeightFile("baselines/ViT-B-32.pt", OPENAI_CLIP_URL, OPENAI_CLIP_SHA256),),
    builder="dreamsearch.models.baselines:build_clip",
    duplicate_distance=0.02,
    resize=224,
    text_builder="dreamsearch.models.clip_text:build_text_encoder",
)
MODELS["resnet50"] = ModelSpec(
    name="resnet50",
    dim=2048,
    branches=("resnet50",),
    files=(WeightFile("baselines/resnet50-0676ba61.pth", RESNET50_URL, "0676ba61"),),
    builder="dreamsearch.models.baselines:build_resnet50",
    duplicate_distance=0.02,
    resize=256,
    resample=2,
)

DEFAULT_MODEL = "dreamsim"
#: The model of a text query that names none: the one with a text tower (DreamSim has none).
DEFAULT_TEXT_MODEL = "clip"


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name. Every command and API call that names a model asks here
    first, so a typo fails before anything is opened, with the closest name (or, when
    none is close, the list of names)."""
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "known models: " + ", ".join(MODELS)
        raise DreamsearchError(f"unknown model '{name}'; {hint}") from None
