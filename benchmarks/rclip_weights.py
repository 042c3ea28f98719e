"""Seeded random weights of rclip's real model, laid out where rclip 4.x reads them, so rclip
runs offline and unpatched in ``benchmarks/peer_rclip.py``.

rclip 4.x runs OpenCLIP ViT-B-32-256 (datacomp_s34b_b86k) through ONNX Runtime, exported by
its ``scripts/convert_model.py`` with the TorchScript exporter, opset 18, one input ``input``
and one output ``output`` with a dynamic batch axis: the image tower on [B, 3, 256, 256]
floats, the text tower (``encode_text``) on [B, 77] int64 tokens. Under ``$RCLIP_DATADIR`` it
looks for (``rclip/model_download.py``)::

    ViT-B-32-256-datacomp_s34b_b86k/visual.onnx
    ViT-B-32-256-datacomp_s34b_b86k/textual.onnx
    tokenizer/bpe_simple_vocab_16e6.txt.gz
    LICENSE  OPENAI-CLIP-MIT.txt  README.md  THIRD_PARTY_NOTICES.md

and downloads whatever is missing from the Hugging Face hub, so every file must be there
(the four notices are only checked for existence). The weights are open_clip's own random
initialisation under ``torch.manual_seed(seed)``: the same network and cost as the real one.

Runs in the dreamsearch venv (torch, open_clip) plus the ``onnx`` package, which torch's
exporter needs and the venv does not have; keep it out of the venv::

    pip install --no-deps --target /tmp/onnx-export-deps onnx ml_dtypes
    PYTHONPATH=/tmp/onnx-export-deps python benchmarks/rclip_weights.py /tmp/peer-rclip/rclip-model
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
VISUAL = f"{MODEL_SUBDIR}/visual.onnx"
TEXTUAL = f"{MODEL_SUBDIR}/textual.onnx"
VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
NOTICES = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")
FILES = (VISUAL, TEXTUAL, VOCAB, *NOTICES)


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def export(folder: Path, seed: int = 0) -> Path:
    """Write every file rclip reads into ``folder`` (each written whole, then renamed)."""
    import importlib.util

    import open_clip
    import torch

    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export would fail only after the tracing
        raise SystemExit("exporting rclip's model needs the onnx package: see benchmarks/rclip_weights.py's docstring")
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32-256", pretrained=None)
    model.eval()
    (folder / MODEL_SUBDIR).mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer").mkdir(exist_ok=True)

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.clip.encode_text(tokens)

    towers = (
        (VISUAL, model.visual, torch.randn(1, 3, 256, 256)),
        (TEXTUAL, Text(), torch.zeros(1, 77, dtype=torch.long)),
    )
    for name, tower, example in towers:
        partial = folder / f"{name}.partial"
        torch.onnx.export(
            tower,
            (example,),
            str(partial),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=18,
            dynamo=False,
        )
        partial.replace(folder / name)
    shutil.copyfile(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", folder / VOCAB)
    for name in NOTICES:
        (folder / name).write_text(
            f"Stand-in for rclip-models' {name}: seeded random weights "
            f"(seed {seed}) written by dreamsearch's benchmarks/rclip_weights.py.\n"
        )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to write rclip's model files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    export(args.folder, args.seed)
    print(f"rclip model files (seed {args.seed}) in {args.folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
