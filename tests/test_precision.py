"""``--precision int8`` from the command line: its vectors never share an index with float32
ones, a library goes on at the precision it was made with, ``models check`` reports every
gate, and where int8 cannot run the user is told in one line."""

from __future__ import annotations

import pytest

from dreamsearch.catalog import Catalog
from dreamsearch.layout import LibraryLayout
from tests.helpers.cli import invoke, invoke_in
from tests.helpers.images import photo_folder

pytest.importorskip("nncf", reason="nncf is not installed (pip install 'dreamsearch[int8]')")
pytestmark = pytest.mark.slow  # the tiny model converted and compressed through OpenVINO: ~5 s

MODEL = "dreamsim-dino"


@pytest.fixture(autouse=True)
def openvino(monkeypatch):
    monkeypatch.delenv("DREAMSEARCH_BACKEND")  # the tests' default is torch; int8 runs on OpenVINO


def _fingerprint(library) -> str:
    with Catalog(LibraryLayout(library).catalog_path, read_only=True) as catalog:
        return catalog.model(MODEL).fingerprint


def test_int8_vectors_never_join_fp32_ones_and_a_library_goes_on_at_its_own_precision(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 6, (96, 72), 0, "p{}.jpg", quality=90)
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert invoke_in(fp32, tiny_weights, "index", str(photos), "-m", MODEL, "-q").exit_code == 0

    refused = invoke_in(fp32, tiny_weights, "index", str(photos), "-m", MODEL, "--precision", "int8", "-q")
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "other weights or precision" in refused.stderr and "+int8" in refused.stderr
    assert not _fingerprint(fp32).endswith("+int8")

    assert invoke_in(int8, tiny_weights, "index", str(photos), "-m", MODEL, "--precision", "int8", "-q").exit_code == 0
    assert _fingerprint(int8).endswith("+int8")
    photo_folder(photos, 2, (96, 72), 50, "new{}.jpg", start=0, quality=90)
    again = invoke_in(int8, tiny_weights, "index", str(photos), "-m", MODEL, "--json")  # no --precision: int8 goes on
    assert again.exit_code == 0 and '"embedded": 2' in again.stdout

    found = invoke_in(
        int8, tiny_weights, "query", str(photos / "p0.jpg"), "-m", MODEL, "-k", "3", "--json", "--no-server"
    )
    assert found.exit_code == 0 and '"rank": 1' in found.stdout
    mixed = invoke_in(
        int8, tiny_weights, "query", str(photos / "p0.jpg"), "-m", MODEL, "--precision", "fp32", "--no-server"
    )
    assert mixed.exit_code == 1 and len(mixed.stderr.strip().splitlines()) == 1
    assert "vectors are int8, not fp32: query with --precision int8" in mixed.stderr


def test_models_check_reports_each_gate_on_the_users_pictures(tmp_path, tiny_weights):
    photos = photo_folder(tmp_path / "photos", 41, (96, 72), 0, "p{:02d}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a picture")
    checked = invoke(
        "models",
        "check",
        MODEL,
        str(photos),
        "--precision",
        "int8",
        "--limit",
        "40",
        "--weights-dir",
        str(tiny_weights),
    )
    assert checked.exit_code == 0, checked.output
    for label in (
        "cosine with float32, lowest",
        "distance change between pictures",
        "top 10 shared",
        "cosine alone vs in a batch",
    ):
        assert label in checked.stdout
    assert "every gate holds on these pictures" in checked.stdout
    assert "broken.jpg" in checked.stderr and "40 pictures" in checked.stdout

    few = photo_folder(tmp_path / "few", 5, (96, 72), 0, "p{}.png")
    too_few = invoke("models", "check", MODEL, str(few), "--precision", "int8", "--weights-dir", str(tiny_weights))
    assert too_few.exit_code == 1
    assert too_few.stderr.strip().endswith("5 readable pictures; the check needs at least 40")


@pytest.mark.parametrize(
    ("env", "device", "message"),
    [
        (
            {"DREAMSEARCH_BACKEND": "torch"},
            "cpu",
            "--precision int8 runs through OpenVINO, but DREAMSEARCH_BACKEND=torch turns it off",
        ),
        ({}, "cuda", "--precision int8 runs on the CPU (through OpenVINO); use --device cpu or auto"),
    ],
)
def test_int8_where_it_cannot_run_is_told_in_one_line(tmp_path, tiny_weights, env, device, message):
    photos = photo_folder(tmp_path / "photos", 2, (96, 72), 0, "p{}.jpg", quality=90)
    refused = invoke(
        "index",
        str(photos),
        "-m",
        MODEL,
        "--precision",
        "int8",
        "--device",
        device,
        "--library",
        str(tmp_path / "library"),
        "--weights-dir",
        str(tiny_weights),
        env=env,
    )
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [f"error: {message}"]
