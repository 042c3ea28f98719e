"""A real model slowed down: a sleep per image before each real forward pass, so the tiny
test model behaves, to the indexer, like the DreamSim ensemble on a small CPU (0.2-2
images/s). Nothing of the model is skipped.

``python tests/helpers/slowed_model.py SECONDS ARGS...`` runs the ``dreamsearch`` command
(``ARGS``) with every model slowed to ``SECONDS`` per image: a real process to send
signals to. As a script it takes ``dreamsearch`` from ``PYTHONPATH``, so it can run an
older checkout too (benchmarks/index_responsiveness.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np


def slowed_embed(seconds_per_image: float, sizes: list[int] | None = None) -> Callable:
    """``Embedder.embed``, sleeping ``seconds_per_image`` per image first; appends each
    call's batch size to ``sizes``."""
    from dreamsearch.models.embedder import Embedder

    real = Embedder.embed

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if sizes is not None:
            sizes.append(len(batch))
        time.sleep(seconds_per_image * len(batch))
        return real(self, batch)

    return embed


if __name__ == "__main__":
    from dreamsearch.cli import main
    from dreamsearch.models.embedder import Embedder

    Embedder.embed = slowed_embed(float(sys.argv.pop(1)))
    main(prog_name="dreamsearch")
