"""Running ``dreamsearch`` from tests, in the few ways the tests need: in this process
(click's runner: fast, monkeypatches apply), or in a fresh interpreter (imports, exit codes,
signals and locales as a user's shell sees them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from dreamsearch.cli import main

#: ``python -m dreamsearch``, as a shell line (for scripts run by bash).
SHELL_COMMAND = f"{sys.executable} -m dreamsearch"
#: The modules a probed command reports, as it exits, whether it imported.
WATCHED = ("faiss", "open_clip", "openvino", "timm", "torch", "torchvision")
PROBE = f"""
import atexit, json, sys
atexit.register(lambda: print(json.dumps([m for m in {WATCHED!r} if m in sys.modules]), file=sys.stderr))
from dreamsearch.cli import main
main(prog_name="dreamsearch")
"""


def invoke(*args: str, env: Mapping[str, str] | None = None, catch_exceptions: bool = True) -> Result:
    """``dreamsearch ARGS`` in this process; ``result.stderr`` holds what a user would read."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=catch_exceptions)


def invoke_in(library: Path, weights: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """``dreamsearch ARGS --library LIBRARY --weights-dir WEIGHTS --device cpu``, in this process."""
    return invoke(*args, "--library", str(library), "--weights-dir", str(weights), "--device", "cpu", env=env)


def invoke_as_user(weights: Path, library: Path | None, *args: str) -> Result:
    """``dreamsearch ARGS [--library LIBRARY]`` as a user who set ``DREAMSEARCH_WEIGHTS``
    once runs it; an exception is raised, not kept in the result, so a traceback fails the test."""
    where = () if library is None else ("--library", str(library))
    return invoke(*args, *where, env={"DREAMSEARCH_WEIGHTS": str(weights)}, catch_exceptions=False)


def run_module(
    *args: str | bytes, env: Mapping[str, str] | None = None, text: bool = True
) -> subprocess.CompletedProcess:
    """``python -m dreamsearch ARGS`` in a fresh interpreter (``text=False``: bytes out)."""
    return subprocess.run([sys.executable, "-m", "dreamsearch", *args], capture_output=True, text=text, env=env)


@dataclass(frozen=True)
class Probed:
    code: int
    stdout: str
    stderr: str
    imported: frozenset[str]


def probe(*args: str | Path, env: Mapping[str, str] | None = None) -> Probed:
    """``dreamsearch ARGS`` in a fresh interpreter, with the ``WATCHED`` modules it had
    imported when it exited (its report is taken off ``stderr``). ``env`` adds to ours."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    *stderr, imported = result.stderr.splitlines()
    return Probed(result.returncode, result.stdout, "\n".join(stderr), frozenset(json.loads(imported)))
