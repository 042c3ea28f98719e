"""Write seeded random DreamSim weights in the official ``cache_dir`` layout.

Backbones are built with the official package's own classes (and, for DINOv2, with the
reference in ``dinov2_reference.py``), randomised, and saved exactly as the release files
are; LoRA adapters are made and saved with peft on the official ``PerceptualModel``.
The official package then loads the folder offline, which makes it a test oracle:
torch.hub finds the stand-in ``hubconf.py`` files written here instead of GitHub.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"

HERE = Path(__file__).resolve().parent

DINO_HUBCONF = f'''
import torch
from dreamsim.feature_extraction.vision_transformer import vit_base

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        state = torch.hub.load_state_dict_from_url("{DINO_URL}", map_location="cpu")
        model.load_state_dict(state, strict=True)
    return model
'''

DINOV2_HUBCONF = f'''
import importlib.util
import torch

dependencies = ["torch"]
_spec = importlib.util.spec_from_file_location("dinov2_reference", r"{HERE / "dinov2_reference.py"}")
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)


def dinov2_vitb14(pretrained=True, **kwargs):
    model = _reference.DinoV2()
    if pretrained:
        state = torch.hub.load_state_dict_from_url("{DINOV2_URL}", map_location="cpu")
        model.load_state_dict(state, strict=True)
    return model
'''

# official type -> (backbone files to write, LoRA folder)
TYPES = {
    "ensemble": (("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), "ensemble_lora"),
    "dino_vitb16": (("dino_vitb16",), "dino_vitb16_single_lora"),
    "clip_vitb32": (("clip_vitb32",), "clip_vitb32_single_lora"),
    "open_clip_vitb32": (("open_clip_vitb32",), "open_clip_vitb32_single_lora"),
    "dinov2_vitb14": (("dinov2_vitb14",), "dinov2_vitb14_single_lora"),
    "synclr_vitb16": (("synclr_vitb16",), "synclr_vitb16_single_lora"),
}
#: Every backbone, in a fixed order: a backbone's seed comes from its place here, not from
#: which type wrote the shared cache first (under pytest-xdist that order varies by worker).
BRANCHES = tuple(dict.fromkeys(branch for branches, _ in TYPES.values() for branch in branches))


@contextlib.contextmanager
def without_default_init() -> Iterator[None]:
    """Build models without torch's default init of their Linear layers. Every model built
    here gets all its weights afterwards, from ``randomize_`` or from a checkpoint the
    official loaders read strictly, so the kaiming_uniform_ of a ViT-B (~0.5 CPU-s, 7.7 of
    the conformance tests' 54) made numbers nobody reads."""
    with mock.patch.object(torch.nn.Linear, "reset_parameters", lambda self: None):
        yield


def randomize_(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fill a state dict with seeded values of realistic scale (LayerNorm gains near 1)."""
    out = {}
    for key, value in state.items():
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", "pos_drop.weight", "ln_pre.weight")):
            out[key] = 1.0 + 0.1 * noise
        elif key.endswith("gamma"):
            out[key] = 0.5 + 0.1 * noise
        elif key == "proj":
            out[key] = noise * value.shape[0] ** -0.5
        else:
            out[key] = 0.02 * noise
    return out


def _vit_state(patch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from dreamsim.feature_extraction.vision_transformer import vit_base

    with without_default_init():
        return randomize_(vit_base(patch_size=patch_size).state_dict(), generator)


def write_backbone(root: Path, branch: str, seed: int) -> None:
    """Write one backbone file (and the extra files the official loader opens)."""
    g = torch.Generator().manual_seed(seed)
    if branch == "dino_vitb16":
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save(_vit_state(16, g), root / "checkpoints/dino_vitbase16_pretrain.pth")
        # The official loader also reads the DINO head from the full training checkpoint.
        head = {
            "module.head.mlp.0.weight": torch.randn(2048, 768, generator=g) * 0.02,
            "module.head.mlp.0.bias": torch.zeros(2048),
            "module.head.mlp.2.weight": torch.randn(2048, 2048, generator=g) * 0.02,
            "module.head.mlp.2.bias": torch.zeros(2048),
            "module.head.mlp.4.weight": torch.randn(256, 2048, generator=g) * 0.02,
            "module.head.mlp.4.bias": torch.zeros(256),
            "module.head.last_layer.weight": torch.randn(2048, 256, generator=g) * 0.02,
        }
        torch.save({"student": head}, root / "dino_vitb16_pretrain.pth")
        _write_hubconf(root / "facebookresearch_dino_main", DINO_HUBCONF)
    elif branch == "dinov2_vitb14":
        import importlib.util

        spec = importlib.util.spec_from_file_location("dinov2_reference", HERE / "dinov2_reference.py")
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
        with without_default_init():
            state = randomize_(reference.DinoV2().state_dict(), g)
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save(state, root / "checkpoints/dinov2_vitb14_pretrain.pth")
        shutil.copyfile(root / "checkpoints/dinov2_vitb14_pretrain.pth", root / "dinov2_vitb14_pretrain.pth")
        _write_hubconf(root / "facebookresearch_dinov2_main", DINOV2_HUBCONF)
    elif "clip" in branch:
        patch = int(branch[-2:])
        state = _vit_state(patch, g)
        state["pos_drop.weight"] = 1.0 + 0.1 * torch.randn(768, generator=g)
        state["pos_drop.bias"] = 0.02 * torch.randn(768, generator=g)
        state["proj"] = torch.randn(768, 512, generator=g) * 768**-0.5
        torch.save({"state_dict": state}, root / f"{branch}_pretrain.pth.tar")
    elif branch == "synclr_vitb16":
        state = {f"module.visual.{k}": v for k, v in _vit_state(16, g).items()}
        torch.save({"model": state}, root / "synclr_vit_b_16.pth")
    else:
        raise ValueError(branch)


def _write_hubconf(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(text)


def write_adapter(root: Path, dreamsim_type: str, seed: int, r: int = 8, alpha: float = 16.0) -> None:
    """Save a LoRA adapter with non-zero A and B through peft, on the official model."""
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    config = dreamsim_args["model_config"][dreamsim_type]
    with without_default_init():
        model = PerceptualModel(**config, device="cpu", load_dir=str(root), normalize_embeds=True)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1, bias="none", target_modules=["qkv"])
    peft_model = get_peft_model(model, lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    peft_model.save_pretrained(str(root / TYPES[dreamsim_type][1]))


def write_official_cache(root: Path, dreamsim_type: str, seed: int = 0) -> Path:
    """Everything the official ``dreamsim(cache_dir=root, dreamsim_type=...)`` reads."""
    root.mkdir(parents=True, exist_ok=True)
    branches, _ = TYPES[dreamsim_type]
    for branch in branches:
        if not _backbone_present(root, branch):
            write_backbone(root, branch, seed * 100 + BRANCHES.index(branch))
    write_adapter(root, dreamsim_type, seed * 100 + 50 + list(TYPES).index(dreamsim_type))
    return root


def _backbone_present(root: Path, branch: str) -> bool:
    names = {
        "dino_vitb16": "checkpoints/dino_vitbase16_pretrain.pth",
        "dinov2_vitb14": "checkpoints/dinov2_vitb14_pretrain.pth",
        "synclr_vitb16": "synclr_vit_b_16.pth",
    }
    return (root / names.get(branch, f"{branch}_pretrain.pth.tar")).exists()


def official_model(root: Path, dreamsim_type: str, device: str = "cpu"):
    """The official package's model and preprocess, built offline from ``root``."""
    from dreamsim import dreamsim

    with without_default_init():
        model, preprocess = dreamsim(pretrained=True, device=device, cache_dir=str(root), dreamsim_type=dreamsim_type)
    return model, preprocess


def official_embeddings(root: Path, dreamsim_type: str, paths: list[Path]):
    """What the official package embeds ``paths`` as (``float32 [N, dim]``): the reference
    every backend's conformance test compares with."""
    from PIL import Image

    model, preprocess = official_model(root, dreamsim_type)
    with torch.no_grad():
        return torch.cat([model.embed(preprocess(Image.open(path))) for path in paths]).numpy()


def write_tiny_cache(
    root: Path, dreamsim_type: str = "dino_vitb16", width: int = 64, depth: int = 2, seed: int = 0
) -> Path:
    """A small ViT (same layout and file names, ``width``/``depth`` shrunk) for pipeline
    tests: our loader reads shapes from the checkpoint, so the whole real code path runs
    in milliseconds. The official package cannot load it (it hard-codes ViT-B)."""
    import json

    from dreamsim.feature_extraction.vision_transformer import VisionTransformer
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    branches, adapter_dir = TYPES[dreamsim_type]
    root.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for index, branch in enumerate(branches):
        patch = int(branch[-2:])
        vit = VisionTransformer(
            patch_size=patch,
            embed_dim=width,
            depth=depth,
            num_heads=max(1, width // 64),
            qkv_bias=True,
            norm_layer=torch.nn.LayerNorm,
        )
        state = randomize_(vit.state_dict(), g)
        if branch == "dino_vitb16":
            (root / "checkpoints").mkdir(exist_ok=True)
            torch.save(state, root / "checkpoints/dino_vitbase16_pretrain.pth")
        elif branch == "synclr_vitb16":
            torch.save({"model": {f"module.visual.{k}": v for k, v in state.items()}}, root / "synclr_vit_b_16.pth")
        elif "clip" in branch:
            state["pos_drop.weight"] = torch.ones(width)
            state["pos_drop.bias"] = torch.zeros(width)
            state["proj"] = torch.randn(width, 32, generator=g) * width**-0.5
            torch.save({"state_dict": state}, root / f"{branch}_pretrain.pth.tar")
        else:
            raise ValueError(f"no tiny layout for {branch}")
        for block in range(depth):
            key = f"base_model.model.extractor_list.{index}.model.blocks.{block}.attn.qkv"
            tensors[f"{key}.lora_A.weight"] = torch.randn(4, width, generator=g) * 0.05
            tensors[f"{key}.lora_B.weight"] = torch.randn(3 * width, 4, generator=g) * 0.05
    (root / adapter_dir).mkdir(exist_ok=True)
    save_file(tensors, str(root / adapter_dir / "adapter_model.safetensors"))
    config = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none", "target_modules": ["qkv"]}
    (root / adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    return root


def write_clip_checkpoint(root: Path, seed: int = 3):
    """A random OpenAI CLIP ViT-B/32 saved where the ``clip`` baseline looks; returns the
    open_clip model and its evaluation transform (the reference)."""
    import open_clip

    torch.manual_seed(seed)
    reference, _, transform = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
    reference.eval()
    # OpenAI's checkpoint is stored in fp16 and open_clip's loader rounds through fp16,
    # so use fp16-representable weights like the real file.
    reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    (root / "baselines").mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), root / "baselines" / "ViT-B-32.pt")
    return reference, transform


def write_openai_clip(root: Path, seed: int = 5, archive: bool = True) -> Path:
    """A random OpenAI CLIP ViT-B/32 saved where the ``clip`` baseline looks, in a layout
    its loader reads; returns the file. ``archive``: as OpenAI publishes it, a scripted
    TorchScript archive holding OpenAI's names, float16 where OpenAI's file is (conv, linear
    and attention weights, the projections) and the causal mask as a plain attribute (not
    in its state dict). Otherwise a float32 fine-tune's ``torch.save(state_dict)``, with
    values float16 cannot hold. LayerNorms are random too (open_clip starts them at 1 and 0,
    which would hide one loaded in the wrong place)."""
    import warnings

    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in f".{name}":
                param.add_(torch.randn_like(param) * (0.1 if name.endswith("weight") else 0.02))
    mask = model.attn_mask
    del model.attn_mask
    model.attn_mask = mask
    path = root / "baselines" / "ViT-B-32.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not archive:
        torch.save(model.state_dict(), path)
        return path
    open_clip.model.convert_weights_to_fp16(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        torch.jit.save(torch.jit.script(model), path)
    return path


def write_resnet50_checkpoint(root: Path, seed: int = 4):
    """A random torchvision ResNet50 (with non-trivial batch-norm statistics) saved where the
    ``resnet50`` baseline looks; returns the model (the reference)."""
    from torchvision.models import resnet50

    torch.manual_seed(seed)
    reference = resnet50(weights=None).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    (root / "baselines").mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), root / "baselines" / "resnet50-0676ba61.pth")
    return reference


def write_tiny_openai_clip(root: Path, width: int = 64, depth: int = 2, embed_dim: int = 32, seed: int = 0) -> Path:
    """A small OpenAI CLIP, both towers (``width``/``depth`` shrunk; CLIP's real vocabulary,
    77-token context and 32-pixel patches), saved under OpenAI's names where the ``clip``
    baseline looks, as a float32 fine-tune's ``torch.save(state_dict)``; returns the folder.
    Text queries run the whole real code path on it in milliseconds. Built from shapes
    alone (importing open_clip costs ~8 s); the full size is checked against open_clip in
    tests/models/test_clip_text.py."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "visual.conv1.weight": (width, 3, 32, 32),
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (50, width),
        "visual.ln_pre.weight": (width,),
        "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,),
        "visual.ln_post.bias": (width,),
        "visual.proj": (width, embed_dim),
        "token_embedding.weight": (49408, width),
        "positional_embedding": (77, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
        "text_projection": (width, embed_dim),
        "logit_scale": (),
    }
    for tower in ("visual.transformer", "transformer"):
        for block in range(depth):
            prefix = f"{tower}.resblocks.{block}."
            shapes |= {
                prefix + "ln_1.weight": (width,),
                prefix + "ln_1.bias": (width,),
                prefix + "attn.in_proj_weight": (3 * width, width),
                prefix + "attn.in_proj_bias": (3 * width,),
                prefix + "attn.out_proj.weight": (width, width),
                prefix + "attn.out_proj.bias": (width,),
                prefix + "ln_2.weight": (width,),
                prefix + "ln_2.bias": (width,),
                prefix + "mlp.c_fc.weight": (4 * width, width),
                prefix + "mlp.c_fc.bias": (4 * width,),
                prefix + "mlp.c_proj.weight": (width, 4 * width),
                prefix + "mlp.c_proj.bias": (width,),
            }
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        if ".ln_" in f".{name}" and name.endswith("weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith(("proj", "projection")):
            state[name] = noise * shape[0] ** -0.5
        else:
            state[name] = 0.02 * noise
    (root / "baselines").mkdir(parents=True, exist_ok=True)
    torch.save(state, root / "baselines" / "ViT-B-32.pt")
    return root
