"""Which backend a test's models run on. The suite's own process runs them on torch
(tests/conftest.py); servers and CLIs started as a user starts them run on the product's
default (``auto``: OpenVINO where it is installed), from a graph saved once per weights
folder, so that none of them imports torch to build its model (~1.3 of a CLI query's
2 CPU-s here)."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from dreamsearch.models import PendingModel, precision

#: The environment of a process started as a user starts it.
AS_USERS_RUN = {precision.ENV: "auto"}


def with_saved_graphs(weights: Path, *models: str) -> Path:
    """``weights`` once each model has been built on the default backend, which saves its
    graph there (in this process, where torch is loaded already: ~0.4 CPU-s for the tiny
    DINO). Where OpenVINO is not installed the default is torch, and nothing is saved."""
    with mock.patch.dict(os.environ, AS_USERS_RUN):
        for name in models:
            PendingModel(name, weights_dir=weights, device="cpu").load()
    return weights
