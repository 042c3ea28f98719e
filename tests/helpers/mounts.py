"""Real read-only and full file systems, mounted in a private mount namespace."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """Run a bash ``script`` in a private mount namespace (its mounts vanish with it)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    args = ["unshare", "-m"] if probe.returncode == 0 else ["unshare", "-rm"]
    if subprocess.run([*args, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a mount namespace here")
    return subprocess.run(
        [*args, "bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=300
    )
