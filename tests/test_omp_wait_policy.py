"""OpenMP threads sleep while they wait, unless the user says otherwise (issue 23: spinning
threads made one image cost 1.6-1.9 CPU s and 12-16 s wall on a busy machine)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: What torch's OpenMP runtime sees when it starts, after ``import dreamsearch``.
PROBE = "import dreamsearch, os, torch; torch.ones(1); print(os.environ.get('OMP_WAIT_POLICY'))"


@pytest.mark.parametrize(("given", "seen"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_dreamsearch_makes_openmp_threads_sleep_unless_the_environment_says(given, seen):
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        environment["OMP_WAIT_POLICY"] = given
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment, check=True)
    assert probe.stdout.strip() == seen
