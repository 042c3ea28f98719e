"""The test suite's own promise (issue 22): a test that needs no model does not pay for
torch. conftest.py used to import the official-layout weight writers (torch, ~2.5 s on 2
busy cores) for every test, model or not; its model fixtures now import them when used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_conftest_imports_no_model_library():
    code = (
        "import sys, tests.conftest\nprint([m for m in ('torch', 'dreamsim', 'open_clip', 'timm') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
