"""The command line: fast help, embed output formats, one-line errors, model management."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dreamsearch.batch_embed import embed_files
from dreamsearch.models import load_model
from tests.helpers.cli import invoke, run_module


def test_help_does_not_import_heavy_modules():
    code = "import sys; from dreamsearch.cli import main; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    result = run_module("--help")
    assert result.returncode == 0
    assert "embed" in result.stdout and "models" in result.stdout


@pytest.fixture(scope="module")
def dino_weights(official_cache):
    return official_cache("dino_vitb16")


@pytest.mark.slow
def test_embed_keeps_a_row_per_input_nan_for_bad_files_and_reports_them(tmp_path, sample_images, dino_weights):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    inputs = [sample_images[2], bad, sample_images[0], sample_images[1]]
    out = tmp_path / "v.npy"
    result = invoke(
        "embed",
        *map(str, inputs),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(dino_weights),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "2",
    )
    assert result.exit_code == 1
    assert f"skipped {bad}: not an image" in result.stderr
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 768)  # row i is inputs[i]
    assert np.isnan(vectors[1]).all() and not np.isnan(vectors[[0, 2, 3]]).any()
    expected = embed_files(
        load_model("dreamsim-dino", weights_dir=dino_weights, device="cpu"),
        [sample_images[2], sample_images[0], sample_images[1]],
    ).vectors
    np.testing.assert_allclose(vectors[[0, 2, 3]], expected, atol=1e-6)
    as_json = invoke(
        "embed",
        *map(str, inputs),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(dino_weights),
        "-o",
        "-",
        "--device",
        "cpu",
    )
    rows = json.loads(as_json.stdout)["embeddings"]
    assert as_json.exit_code == 1 and [row["path"] for row in rows] == list(map(str, inputs))
    assert rows[1]["vector"] is None and rows[1]["error"] == "not an image Pillow can read"
    np.testing.assert_allclose([rows[i]["vector"] for i in (0, 2, 3)], expected, atol=1e-6)


@pytest.mark.slow
def test_embed_json_to_stdout(sample_images, dino_weights):
    result = invoke(
        "embed",
        str(sample_images[0]),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(dino_weights),
        "-o",
        "-",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["model"] == "dreamsim-dino" and document["dim"] == 768
    assert document["embeddings"][0]["path"] == str(sample_images[0])
    assert abs(np.linalg.norm(document["embeddings"][0]["vector"]) - 1) < 1e-5
    assert document["failed"] == []


def test_missing_weights_is_one_line_without_traceback(tmp_path, sample_images):
    result = run_module(
        "embed", str(sample_images[0]), "-m", "dreamsim", "--weights-dir", str(tmp_path), "-o", str(tmp_path / "v.npy")
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'dreamsim' needs weights")
    assert "dreamsearch models import dreamsim" in lines[0]
    assert not (tmp_path / "v.npy").exists()


def test_unknown_model_and_unknown_device(tmp_path, sample_images):
    result = run_module("embed", str(sample_images[0]), "-m", "nope", "-o", str(tmp_path / "v.npy"))
    assert result.returncode == 1 and "unknown model 'nope'" in result.stderr and "dreamsim-dino" in result.stderr
    result = run_module("embed", str(sample_images[0]), "--device", "tpu", "-o", str(tmp_path / "v.npy"))
    assert result.returncode == 2 and "tpu" in result.stderr


def test_models_list_import_and_list_again(tmp_path, dino_weights):
    weights = tmp_path / "w"
    listing = invoke("models", "list", "--weights-dir", str(weights))
    assert listing.exit_code == 0
    assert "dreamsim-dino" in listing.stdout and "resnet50" in listing.stdout and "yes" not in listing.stdout

    imported = invoke("models", "import", "dreamsim-dino", str(dino_weights), "--weights-dir", str(weights))
    assert imported.exit_code == 0, imported.output
    assert "dreamsim-dino: installed" in imported.stdout

    listing = invoke("models", "list", "--weights-dir", str(weights))
    row = next(line for line in listing.stdout.splitlines() if "dreamsim-dino" in line)
    assert "yes" in row and "MiB" in row


def test_fetch_offline_is_a_clear_error(tmp_path):
    result = run_module("models", "fetch", "resnet50", "--weights-dir", str(tmp_path))
    assert result.returncode == 1
    assert "resnet50-0676ba61.pth" in result.stderr and "Traceback" not in result.stderr


def test_index_status_and_forget_commands(tmp_path, tiny_weights):
    from tests.helpers.images import photo_folder

    photos = photo_folder(tmp_path / "photos", 3, (120, 90), 0, "{}.jpg")
    (photos / "bad.jpg").write_bytes(b"")
    library = tmp_path / "lib"
    common = ["--library", str(library)]
    result = invoke(
        "index",
        str(photos),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(tiny_weights),
        "--workers",
        "0",
        "--json",
        *common,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["new"] == 4 and summary["embedded"] == 3 and summary["failed"] == 1
    assert f"skipped {photos / 'bad.jpg'}: empty file" in result.stderr

    status = invoke("status", "--failed", *common)
    assert status.exit_code == 0
    assert f"{photos.resolve()}: 3 images, 1 unreadable" in status.stdout
    assert "model dreamsim-dino: 3 vectors, dim 64, index IDMap2,Flat" in status.stdout
    assert "failed" in status.stdout and "bad.jpg: empty file" in status.stdout

    dry = invoke("index", str(photos), "--dry-run", "--json", *common)
    assert json.loads(dry.stdout.strip().splitlines()[-1])["unchanged"] == 4

    forgot = invoke("forget", str(photos), *common)
    assert forgot.exit_code == 0 and "4 files" in forgot.stdout
    status = invoke("status", *common)
    assert "no folders indexed yet" in status.stdout and "0 vectors" in status.stdout
    missing = invoke("forget", str(photos), *common)
    assert missing.exit_code == 1 and "not an indexed folder" in missing.stderr


def test_a_torchvision_built_for_another_torch_is_one_line_naming_what_to_install(
    tmp_path, sample_images, dino_weights, monkeypatch
):
    """What a mismatched pair raises when torchvision is imported (issue 23): a traceback
    that named neither version."""
    import importlib.metadata

    from dreamsearch.models import PendingModel

    def mismatched(self):
        raise RuntimeError("operator torchvision::nms does not exist")

    real_version = importlib.metadata.version
    monkeypatch.setattr(PendingModel, "load", mismatched)
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: {"torch": "2.14.1", "torchvision": "0.27.0"}.get(name) or real_version(name),
    )
    result = invoke(
        "embed",
        str(sample_images[0]),
        "-m",
        "dreamsim-dino",
        "--weights-dir",
        str(dino_weights),
        "-o",
        str(tmp_path / "v.npy"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.strip() == (
        "error: torchvision 0.27.0 was not built for torch 2.14.1: install the "
        "torchvision release made for this torch (pip install 'torchvision==0.29.*')"
    )
