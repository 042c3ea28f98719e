"""OpenVINO fp32 against torch fp32 on the CPU: images/s and max |diff|, in one run.

Same seeded random weights in the official layout, same 224×224 pixels (decoding
excluded), both backends loaded through ``load_model`` (``DREAMSEARCH_BACKEND`` picks
each), timed in turns so load from other processes hits both alike. Also prints what the
first load costs (conversion + saving it) against a load that reads the saved conversion.

    python benchmarks/openvino_speed.py --threads 2

Needs the test extra (``pip install -e '.[test]'``: the official layout writer, openvino).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.embed_throughput import NAMES, interleaved_rates  # noqa: E402
from dreamsearch.models import load_model  # noqa: E402
from dreamsearch.models.base import set_threads  # noqa: E402
from dreamsearch.models.precision import ENV  # noqa: E402
from tests.helpers.official_layout import write_official_cache  # noqa: E402


def load(name: str, root: Path, backend: str):
    os.environ[ENV] = backend
    start = time.perf_counter()
    model = load_model(name, weights_dir=root, device="cpu", allow_download=False)
    assert model.backend == backend, model
    return model, time.perf_counter() - start


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=["dino_vitb16", "ensemble"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=16, help="images per timed round and contender")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)
    import openvino

    print(f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, openvino {openvino.__version__}")
    print(f"load average at start: {loadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed, dreamsim_type in enumerate(args.types, start=1):
            name = NAMES[dreamsim_type]
            write_official_cache(root, dreamsim_type, seed=seed)
            reference, torch_load = load(name, root, "torch")
            _, first_load = load(name, root, "openvino")
            fast, cached_load = load(name, root, "openvino")
            print(
                f"  {name}: load torch {torch_load:.1f} s, openvino first (convert + save) {first_load:.1f} s, "
                f"openvino from the saved conversion {cached_load:.1f} s"
            )
            for batch in args.batches:
                pixels = np.random.default_rng(batch).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
                diff = float(np.abs(fast.embed(pixels) - reference.embed(pixels)).max())
                steps = {"torch": partial(reference.embed, pixels), "openvino": partial(fast.embed, pixels)}
                rates = interleaved_rates(steps, batch, args.images, torch.device("cpu"), args.rounds)
                rows.append((name, batch, rates["torch"], rates["openvino"], diff))
    print(f"load average at end: {loadavg()}")
    print(f"\n{'model':<14}{'batch':>6}{'torch img/s':>13}{'openvino img/s':>16}{'ratio':>8}{'max|diff|':>11}")
    for name, batch, slow, fast_rate, diff in rows:
        print(f"{name:<14}{batch:>6}{slow:>13.2f}{fast_rate:>16.2f}{fast_rate / slow:>7.2f}x{diff:>11.1e}")


if __name__ == "__main__":
    main()
