"""What the suite's own set-up promises (issue 22): an input shared by the pytest-xdist
workers is made once, and the suite's processes convert models without OpenVINO's usage
statistics, as the product does."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.helpers.shared import made_once


def test_an_input_asked_for_at_once_is_made_once_and_complete_for_every_caller(tmp_path):
    made: list[Path] = []

    def make(path: Path) -> None:
        made.append(path)
        time.sleep(0.2)  # the other caller asks meanwhile
        path.write_text("complete")

    seen: list[str] = []

    def ask() -> None:
        seen.append(made_once(tmp_path, "input", make).read_text())

    callers = [threading.Thread(target=ask) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    ask()  # and a later one
    assert made == [tmp_path / "input"] and seen == ["complete"] * 3


def test_the_suites_processes_convert_without_usage_statistics():
    """The OpenVINO test modules import openvino at collection, before any product code:
    its converter then reported every conversion to Google Analytics, from this process
    (1-2 s a conversion here), unless ``tests/conftest.py`` keeps it off first."""
    pytest.importorskip("openvino")
    from openvino.tools.ovc import telemetry_utils

    assert telemetry_utils.tm.__name__ == "openvino.tools.ovc.telemetry_stub"
