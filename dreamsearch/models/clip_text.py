"""OpenAI CLIP's text tower, from the same checkpoint file as the ``clip`` image tower.

Text search needs a text vector in the space of the stored ``clip`` image vectors, which
only CLIP's own text tower gives. It is built apart from the image tower and only by a
text query (``PendingModel.load_text``): an index run never reads or holds it. It is a
causal pre-norm transformer with QuickGELU, on the blocks of our ViT (``vit.Block``), read
under OpenAI's names as ``openai_clip.py`` reads the image tower, so open_clip is not
needed at run time. The vector is the end marker's row after ``ln_final``, times
``text_projection``: exactly open_clip's ``encode_text`` (``tests/models/test_clip_text.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamsearch.errors import WeightsError, checkpoint_problem
from dreamsearch.models.clip_tokenizer import ClipTokenizer, Tokens, clip_tokenizer
from dreamsearch.models.openai_clip import _RENAMES, read_checkpoint
from dreamsearch.models.registry import ModelSpec
from dreamsearch.models.vit import HEAD_DIM, Block, ViTConfig

#: The text tower's tensors in OpenAI's checkpoint (everything not under ``visual.``).
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class TextTower(nn.Module):
    """Token ids ``[B, T]`` and each row's end-marker position ``[B]`` → ``[B, proj]``."""

    def __init__(self, cfg: ViTConfig, vocabulary: int, context: int) -> None:
        super().__init__()
        # a plain table, not nn.Embedding: its random init on the meta device imports torch's
        # reference ops, 2.6 s of a cold text query (measured, 2 cores)
        self.token_embedding = nn.Parameter(torch.zeros(vocabulary, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(context, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(cfg.width, cfg.proj_dim))

    def forward(self, ids: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding[ids] + self.pos_embed[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        # LayerNorm is per token: normalising only the rows read equals open_clip's whole-sequence one
        return self.ln_final(x[torch.arange(ids.shape[0]), ends]) @ self.text_projection


class TextEncoder:
    """Texts in, unit-norm float32 vectors in the image tower's space out. ``name`` and
    ``fingerprint`` are the image model's: the library checks them as it checks an
    embedder's before searching its vectors."""

    def __init__(self, name: str, tower: TextTower, tokenizer: ClipTokenizer, device: torch.device) -> None:
        self.name = name
        self.tower = tower.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.fingerprint = ""  # set by PendingModel.load_text
        self.legacy_fingerprint = ""

    def tokenize(self, text: str) -> Tokens:
        return self.tokenizer(text)

    def embed(self, texts: Sequence[Tokens]) -> np.ndarray:
        """``float32 [len(texts), dim]``, unit norm. Rows are padded to the longest text
        (the causal mask keeps padding out of every row read), not to CLIP's 77."""
        longest = max(len(t.ids) for t in texts)
        ids = torch.zeros((len(texts), longest), dtype=torch.long)
        for row, tokens in enumerate(texts):
            ids[row, : len(tokens.ids)] = torch.tensor(tokens.ids)
        ends = ids.argmax(dim=1)  # the end marker has the highest id, as open_clip finds it
        with torch.inference_mode():
            vectors = self.tower(ids.to(self.device), ends.to(self.device))
            return F.normalize(vectors.float(), dim=-1).cpu().numpy()

    def __repr__(self) -> str:
        return f"<TextEncoder {self.name} on {self.device}>"


def build_text_encoder(spec: ModelSpec, root: Path, device: torch.device) -> TextEncoder:
    """The text tower of ``spec``'s OpenAI CLIP checkpoint under ``root``, with CLIP's tokenizer."""
    return TextEncoder(spec.name, load_text_tower(root / spec.files[0].path), clip_tokenizer(), device)


def load_text_tower(path: Path) -> TextTower:
    """The text tower of the OpenAI CLIP checkpoint at ``path``; a file that holds none is
    a :class:`WeightsError` naming it."""
    state = text_tower_state(read_checkpoint(path), path)
    try:
        vocabulary, width = state["token_embedding"].shape
        cfg = ViTConfig(
            patch_size=0,
            feature="text",
            width=width,
            heads=max(1, width // HEAD_DIM),
            norm_eps=1e-5,
            quick_gelu=True,
            causal=True,
            proj_dim=state["text_projection"].shape[1],
            depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
            mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        )
        with torch.device("meta"):
            tower = TextTower(cfg, vocabulary, state["pos_embed"].shape[0])
        tower.load_state_dict(state, strict=True, assign=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: no OpenAI CLIP text tower in it ({checkpoint_problem(exc)})") from None
    return tower


def text_tower_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The text tower's tensors of an OpenAI CLIP state dict under our names, as float32
    with the values open_clip's loader gives them: linear and attention weights and
    ``text_projection`` rounded through float16, the embeddings and LayerNorms not (as
    ``openai_clip.image_tower_state`` does for the image tower). Empties ``state``."""
    if "text_projection" not in state:
        raise WeightsError(f"{path}: no OpenAI CLIP text tower in it (no text_projection)")
    tower = {}
    for key in list(state):
        value = state.pop(key)
        if not key.startswith(_TEXT_PREFIXES) or not isinstance(value, torch.Tensor):
            continue
        keeps_precision = ".ln_" in f".{key}" or key in ("token_embedding.weight", "positional_embedding")
        value = value.float() if keeps_precision else value.half().float()
        name = key.removesuffix(".weight") if key == "token_embedding.weight" else key
        for old, new in _RENAMES:
            name = name.replace(old, new)
        tower[name] = value
    return tower
