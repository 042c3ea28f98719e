"""What a model's first CPU load costs in converting it for OpenVINO (float32) and compressing
it to int8, as the product does it now against how it did before, in one run.

Before: OpenVINO traced the network with torch's trace check on (the network run twice more
only to compare the traces), and NNCF compressed each weight through a small OpenVINO model
it compiled for it. Now: one trace, and NNCF on numpy. Each line converts the same seeded
random weights (official layout) from the torch reference, alternating the two ways, and
saves to a fresh folder, so no run reuses another's graph.

    python benchmarks/conversion_time.py --model dreamsim --runs 2

Needs the test extra (``pip install -e '.[test]'``: the official layout writer, openvino, nncf).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("DREAMSEARCH_BACKEND", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dreamsearch.models import PendingModel, openvino_backend  # noqa: E402
from tests.helpers.official_layout import TYPES, write_official_cache  # noqa: E402

OFFICIAL_TYPE = {"dreamsim": "ensemble", "dreamsim-dino": "dino_vitb16", "dreamsim-clip": "clip_vitb32"}


def converted_as_before(ov, network: torch.nn.Module, size: int):
    """OpenVINO's own tracing of the whole module, torch's trace check included."""
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return ov.convert_model(
            openvino_backend._Whole(network).eval(),
            example_input=example,
            input=[(ov.PartialShape([-1, size, size, 3]), ov.Type.u8)],
        )


@contextlib.contextmanager
def as_before():
    """The product's conversion and NNCF's environment switch replaced by what was there before."""
    now = openvino_backend._convert, openvino_backend._nncf_on_numpy
    openvino_backend._convert, openvino_backend._nncf_on_numpy = converted_as_before, contextlib.nullcontext
    try:
        yield
    finally:
        openvino_backend._convert, openvino_backend._nncf_on_numpy = now


def first_load(handle: PendingModel, precision: str) -> tuple[float, float]:
    """CPU seconds and wall seconds of converting (and compressing) the model once."""
    reference = handle.torch_reference()
    cpu, wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as graphs:
        openvino_backend.attach(reference, Path(graphs), "benchmark", precision)
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dreamsim", choices=sorted(OFFICIAL_TYPE))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--weights", type=Path, help="an official-layout folder to reuse (written if missing)")
    args = parser.parse_args()
    official = OFFICIAL_TYPE[args.model]
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights or Path(scratch) / "weights"
        if not (weights / TYPES[official][1]).exists():
            write_official_cache(weights, official)
        handle = PendingModel(args.model, weights_dir=weights, device="cpu", allow_download=False)
        print(f"{args.model}, {torch.get_num_threads()} threads, {args.runs} runs per way, alternated")
        for precision in ("float32", "int8"):
            times: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
            for _ in range(args.runs):
                with as_before():
                    times["before"].append(first_load(handle, precision))
                times["now"].append(first_load(handle, precision))
            cpu = {way: statistics.median(c for c, _ in runs) for way, runs in times.items()}
            wall = {way: statistics.median(w for _, w in runs) for way, runs in times.items()}
            print(
                f"{precision}: before {cpu['before']:.1f} CPU-s ({wall['before']:.1f} s wall), "
                f"now {cpu['now']:.1f} CPU-s ({wall['now']:.1f} s wall): "
                f"{cpu['before'] / cpu['now']:.2f}x less CPU, {wall['before'] / wall['now']:.2f}x less wall"
            )


if __name__ == "__main__":
    main()
