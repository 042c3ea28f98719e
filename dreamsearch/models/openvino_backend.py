"""float32 CPU inference through OpenVINO, when the ``openvino`` extra is installed.

Why: on this project's 2-core CPU OpenVINO runs the same float32 network faster than
torch (benchmarks/openvino_speed.py; docs/performance.md#openvino-fp32), with embeddings
within 1e-5 of the official package (tests/models/test_openvino.py is the gate: a backend
that fails it does not ship, so its vectors keep the torch path's weights fingerprint).

The whole step ``uint8 [B, S, S, 3]`` → unit vectors (scaling, the network, the L2
normalisation) is converted from the torch module once, with a dynamic batch size.
Converting the ensemble costs ~5 s on 2 cores, float32 or int8 (7 CPU-s; 16 s and 24 CPU-s
before torch's trace check and NNCF's per-weight models were left out:
benchmarks/conversion_time.py), and reading the converted model back and compiling it ~1 s,
so it is saved under ``<weights>/openvino/`` (``saved_graph.graph_path``: a code or version
change never reuses a stale graph), and later processes run it without torch
(``saved_graph.load_saved``). A read-only weights folder keeps the conversion in memory for
the process.

``DREAMSEARCH_BACKEND=torch`` turns it off (``precision.chosen_backend``); ``openvino``
insists on it; unset uses it where installed. ``--precision int8`` always runs here: the
network with its LayerNorm scales folded into the next weights (``vit.fold_norm_scales``),
converted, its weights compressed to int8 by NNCF, and saved beside the float32 graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamsearch.models import saved_graph
from dreamsearch.models.base import TorchEmbedder
from dreamsearch.models.embedder import Runner
from dreamsearch.models.precision import DEFAULT_PRECISION, chosen_backend
from dreamsearch.models.vit import fold_norm_scales


def attach(embedder: TorchEmbedder, root: Path, fingerprint: str, precision: str = DEFAULT_PRECISION) -> None:
    """Route ``embedder``'s CPU calls through OpenVINO when that is the chosen backend, or
    int8 is asked for (``precision.check_precision`` has made sure it can run); float32 on
    CUDA (and any autocast) stays on torch, and so does a model asked to be
    ``torch.compile``d (an explicit request wins over a default)."""
    if precision == DEFAULT_PRECISION:
        if chosen_backend() != "openvino":  # first: a misspelt DREAMSEARCH_BACKEND is told on any device
            return
        if embedder.device.type != "cpu" or embedder.autocast_dtype is not None or embedder.compile:
            return
    embedder.runner = _compiled(embedder, root, fingerprint, precision)
    embedder.backend = "openvino" if precision == DEFAULT_PRECISION else f"openvino {precision}"


class _Whole(torch.nn.Module):
    """``Embedder.embed``'s arithmetic as one module, so OpenVINO runs all of it."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float().div(255)
        return F.normalize(self.network(x).float(), dim=-1)


def _compiled(embedder: TorchEmbedder, root: Path, fingerprint: str, precision: str) -> Runner:
    saved_graph.without_telemetry()
    import openvino as ov

    size, path = embedder.preprocess_spec.size, saved_graph.graph_path(root, embedder.name, precision, fingerprint)
    if precision == DEFAULT_PRECISION:
        model = _saved(ov, path, lambda: _convert(ov, embedder.network, size))
    else:
        model = _saved(ov, path, lambda: _int8_weights(_convert(ov, fold_norm_scales(embedder.network), size)))
    return saved_graph.runner(model, precision, torch.get_num_threads())


def _saved(ov, path: Path, make: Callable):
    """The graph saved at ``path``, made by ``make`` and saved there first if need be."""
    model = saved_graph.read(path)
    if model is None:
        model = make()
        _save(ov, model, path)
        # as later runs will (the saved graph compiles slightly differently: ~1e-7)
        model = saved_graph.read(path) or model
    return model


#: NNCF's switch (read on each call) from compressing each weight through a small OpenVINO
#: model it compiles for it, a path made for LLMs' huge matrices, to numpy: for ViT-B's
#: weights the same int8 (not one value differs on DINO's) in 0.3 CPU-s instead of 1.6-2.2.
NNCF_ON_NUMPY = "NNCF_DISABLE_OPTIMIZED_COMPRESSION"


def _int8_weights(model):
    """``model`` with int8 weights, one scale and zero point per output channel (NNCF's
    default int8 scheme; asymmetric kept a little closer to float32 than symmetric here)."""
    import nncf

    nncf.set_log_level(logging.ERROR)  # its statistics table would go to stdout (and `--json`)
    # and so would its progress bar
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), _nncf_on_numpy():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


@contextlib.contextmanager
def _nncf_on_numpy() -> Iterator[None]:
    """``NNCF_ON_NUMPY`` set while NNCF compresses, and the environment as it was after."""
    if os.environ.get(NNCF_ON_NUMPY) is not None:  # the user's own setting: it already is
        yield
        return
    os.environ[NNCF_ON_NUMPY] = "1"
    try:
        yield
    finally:
        os.environ.pop(NNCF_ON_NUMPY, None)


def _convert(ov, network: torch.nn.Module, size: int):
    """The OpenVINO model of ``network``, traced by OpenVINO's own decoder, once: torch's
    trace check (on by default) runs the network twice more only to compare, which was 2.4
    of ViT-B/32's 3.3 CPU-s of converting and 3.4 of ViT-B/16's 4.9, for the same graph.
    The fidelity gate (tests/models/test_openvino.py) checks the graph instead."""
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants
        traced = TorchScriptPythonDecoder(
            _Whole(network).eval(), example_input=example, trace_kwargs={"check_trace": False}
        )
        return ov.convert_model(
            traced, example_input=example, input=[(ov.PartialShape([-1, size, size, 3]), ov.Type.u8)]
        )


def _save(ov, model, path: Path) -> None:
    """Write ``path`` (.xml + .bin) atomically and drop older conversions of this model;
    a folder we may not write keeps the conversion in memory only."""
    try:
        path.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
            staged = Path(tmp) / path.name
            ov.save_model(model, str(staged), compress_to_fp16=False)  # the default would halve the weights
            os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(staged, path)  # the .xml last: it is what marks the pair complete
        name = path.stem.rsplit("-", 1)[0]  # the model (and precision) before the key
        for old in path.parent.glob(f"{name}-*"):
            if old.stem.rsplit("-", 1)[0] == name and old.stem != path.stem and old.suffix in (".xml", ".bin"):
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError):  # OpenVINO reports a failed write as RuntimeError
        pass
