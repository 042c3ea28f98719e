"""`eval nights`, `eval retrieval` and `eval copies` on data whose answers are known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamsearch.catalog import Catalog
from dreamsearch.evaluation.nights import triplet_scores
from dreamsearch.evaluation.retrieval import ranking_metrics
from dreamsearch.images import open_rgb
from tests.helpers.cli import invoke
from tests.helpers.images import photo_like

HEADER = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,prompt"


def _noisy(image: Image.Image, amount: float, seed: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0, amount, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def nights_folder(tmp_path_factory) -> Path:
    """Triplets whose answer is known by construction: one distortion is the reference with
    slight noise (sigma 3), the other with heavy noise (sigma 60).
    - test: 6 ImageNet + 6 other triplets, humans chose the slight one (alternating sides);
      one more whose reference file is missing;
    - val: 4 triplets where humans chose the heavy one;
    - train: 2 triplets whose two distortions are the same picture (a tie for any metric);
    - 2 test rows with 5 votes (left out) where humans chose the heavy one;
    - 2 malformed rows."""
    root = tmp_path_factory.mktemp("nights")
    rows = [HEADER]
    specs = (
        [("test", "True", "slight")] * 6
        + [("test", "False", "slight")] * 6
        + [("val", "False", "heavy")] * 4
        + [("train", "False", "tie")] * 2
        + [("test", "True", "heavy-few-votes")] * 2
    )
    for index, (split, imagenet, answer) in enumerate(specs):
        name = f"{index:03d}"
        (root / "ref" / "000").mkdir(parents=True, exist_ok=True)
        (root / "distort" / "000").mkdir(parents=True, exist_ok=True)
        ref = photo_like(96, 96, 100 + index)
        ref.save(root / "ref" / "000" / f"{name}.png")
        slight, heavy = _noisy(ref, 3, index), _noisy(ref, 60, index + 1000)
        slight_left = index % 2 == 0
        left, right = (slight, heavy) if slight_left else (heavy, slight)
        if answer == "tie":
            left = right = slight
        left.save(root / "distort" / "000" / f"{name}_0.png")
        right.save(root / "distort" / "000" / f"{name}_1.png")
        chose_slight = answer == "slight"
        right_vote = 0.5 if answer == "tie" else float(chose_slight != slight_left)
        votes = 5 if answer == "heavy-few-votes" else 6 + index % 3
        rows.append(
            f"{name},{1 - right_vote},{right_vote},{votes},ref/000/{name}.png,distort/000/{name}_0.png,"
            f"distort/000/{name}_1.png,{split},{imagenet},an image of a thing"
        )
    rows.append("900,1,0,7,ref/000/missing.png,distort/000/000_0.png,distort/000/000_1.png,test,True,x")
    rows.append("901,1,0,7,,,,test,True,x")
    rows.append("902,1,0,seven,ref/000/000.png,distort/000/000_0.png,distort/000/000_1.png,test,True,x")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def test_official_score_formula():
    d0, d1 = np.array([0.1, 0.3, 0.2, 0.2]), np.array([0.2, 0.1, 0.2, 0.3])
    votes = np.array([0.0, 1.0, 1.0, 0.25])
    assert triplet_scores(d0, d1, votes).tolist() == [1.0, 1.0, 0.5, 0.75]


def test_pixel_baselines_score_the_known_answers(nights_folder, tmp_path):
    outcome = invoke(
        "eval",
        "nights",
        str(nights_folder),
        "-m",
        "psnr",
        "-m",
        "ssim",
        "--split",
        "all",
        "--json",
        "--library",
        str(tmp_path / "lib"),
    )
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert document["too_few_votes"] == 2 and document["malformed_rows"] == 2
    assert document["triplets"] == 12 + 1 + 4 + 2  # the missing-image row is read, then skipped
    for name in ("psnr", "ssim"):
        result = document["models"][name]
        assert result["skipped_triplets"] == 1
        splits = result["splits"]
        assert splits["test_imagenet"] == {"accuracy": 1.0, "ci95": [1.0, 1.0], "triplets": 6}
        assert splits["test_no_imagenet"]["accuracy"] == 1.0 and splits["test"]["triplets"] == 12
        assert splits["val"]["accuracy"] == 0.0 and splits["val"]["triplets"] == 4
        assert splits["train"] == {"accuracy": 0.5, "ci95": [0.5, 0.5], "triplets": 2}  # ties score exactly 0.5
    assert "line 23: missing values" in outcome.stderr and "missing.png: no such file" in outcome.stderr

    only_test = json.loads(
        invoke("eval", "nights", str(nights_folder), "-m", "psnr", "--json", "--library", str(tmp_path / "lib")).stdout
    )
    assert set(only_test["models"]["psnr"]["splits"]) == {"test_imagenet", "test_no_imagenet", "test"}


def test_embedding_models_use_dreamsim_distance_and_cache_vectors(nights_folder, tmp_path, tiny_weights, tiny_model):
    args = [
        "nights",
        str(nights_folder),
        "-m",
        "dreamsim-dino",
        "--json",
        "--library",
        str(tmp_path / "lib"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    ]
    first = invoke("eval", *args)
    assert first.exit_code == 0, first.output
    splits = json.loads(first.stdout)["models"]["dreamsim-dino"]["splits"]
    # the same protocol by hand, embedding with the model directly
    scores = {"test_imagenet": [], "test_no_imagenet": []}
    for line in (nights_folder / "data.csv").read_text().splitlines()[1:]:
        f = line.split(",")
        if not f[3].isdigit() or int(f[3]) < 6 or f[7] != "test" or not f[4] or "missing" in f[4]:
            continue
        ref, left, right = tiny_model.embed_images([open_rgb(nights_folder / p) for p in f[4:7]])
        d0, d1 = 1 - float(ref @ left), 1 - float(ref @ right)
        key = "test_imagenet" if f[8] == "True" else "test_no_imagenet"
        scores[key].append(float(triplet_scores(np.float64(d0), np.float64(d1), np.float64(f[2]))))
    for key, values in scores.items():
        assert splits[key]["accuracy"] == pytest.approx(np.mean(values))
        assert splits[key]["ci95"][0] <= splits[key]["accuracy"] <= splits[key]["ci95"][1]
    assert "missing.png: no such file" in first.stderr
    catalog_path = tmp_path / "lib" / "eval" / "catalog.sqlite"
    with Catalog(catalog_path) as catalog:  # the test split's 36 images only
        model = catalog.model("dreamsim-dino")
        assert catalog.count_vectors(model) == 36
        written = catalog.last_seq(model)
    again = invoke("eval", *args)  # cached: same answer, nothing embedded again
    assert json.loads(again.stdout) == json.loads(first.stdout)
    with Catalog(catalog_path) as catalog:
        assert catalog.last_seq(catalog.model("dreamsim-dino")) == written


def test_a_folder_that_is_not_nights_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    outcome = invoke("eval", "nights", str(tmp_path), "-m", "psnr")
    assert outcome.exit_code == 1
    assert "is not a NIGHTS folder" in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
    (tmp_path / "ref").mkdir()
    (tmp_path / "distort").mkdir()
    outcome = invoke("eval", "nights", str(tmp_path), "-m", "psnr")
    assert "is not a NIGHTS data.csv (no column id, right_vote" in outcome.stderr


def test_retrieval_metrics_by_hand():
    relevance = [[True, False, True], [False, False, False], [False, True, False], [True]]
    recall1, recallk, mean_ap = ranking_metrics(relevance, [2, 1, 3, 0], k=3)
    # q1: AP = (1/1 + 2/3) / 2 ; q2: 0 ; q3: (1/2) / 3 ; q4 has nothing relevant: left out
    assert recall1 == pytest.approx(1 / 3) and recallk == pytest.approx(2 / 3)
    assert mean_ap == pytest.approx(((1 + 2 / 3) / 2 + 0 + 0.5 / 3) / 3)


def test_retrieval_on_class_folders(tmp_path, tiny_weights):
    """Three classes of three re-encodes of one photo each: every query finds its class."""
    folder = tmp_path / "classes"
    for label in range(3):
        (folder / f"class{label}").mkdir(parents=True)
        base = photo_like(160, 120, 300 + label)
        for quality in (95, 80, 65):
            base.save(folder / f"class{label}" / f"q{quality}.jpg", quality=quality)
    photo_like(160, 120, 399).save(folder / "unlabelled.jpg")  # a distractor, never a query
    outcome = invoke(
        "eval",
        "retrieval",
        str(folder),
        "-m",
        "dreamsim-dino",
        "-k",
        "2",
        "--json",
        "--library",
        str(tmp_path / "lib"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert outcome.exit_code == 0, outcome.output
    scores = json.loads(outcome.stdout)["models"]["dreamsim-dino"]
    assert scores["queries"] == 9 and scores["k"] == 2
    assert scores["recall_at_1"] == 1.0 and scores["recall_at_k"] == 1.0 and scores["map_at_k"] == 1.0
    assert scores["search_ms_p50"] > 0

    groups = tmp_path / "groups.csv"  # labels from a CSV: two groups of two, the rest distractors
    groups.write_text(
        f"path,group\nclass0/q95.jpg,a\n{folder / 'class0' / 'q80.jpg'},a\nclass1/q95.jpg,b\nclass1/q65.jpg,b\n"
    )
    by_csv = invoke(
        "eval",
        "retrieval",
        str(folder),
        "-m",
        "dreamsim-dino",
        "-k",
        "1",
        "--groups",
        str(groups),
        "--json",
        "--library",
        str(tmp_path / "lib"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert by_csv.exit_code == 0, by_csv.output
    assert json.loads(by_csv.stdout)["models"]["dreamsim-dino"]["queries"] == 4
    groups.write_text("path,group\n/elsewhere/x.jpg,a\n")
    outside = invoke(
        "eval",
        "retrieval",
        str(folder),
        "-m",
        "dreamsim-dino",
        "--groups",
        str(groups),
        "--library",
        str(tmp_path / "lib"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    )
    assert outside.exit_code == 1 and "/elsewhere/x.jpg is not inside" in outside.stderr


def test_copies_harness(tmp_path, tiny_weights):
    folder = tmp_path / "originals"
    folder.mkdir()
    for index in range(4):
        photo_like(200, 150, 400 + index).save(folder / f"o{index}.jpg", quality=92)
    photo_like(200, 150, 410).save(folder / "o0.png")  # same stem as o0.jpg, another picture
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = [
        "copies",
        str(folder),
        "-m",
        "dreamsim-dino",
        "-k",
        "5",
        "--json",
        "--library",
        str(tmp_path / "lib"),
        "--weights-dir",
        str(tiny_weights),
        "--device",
        "cpu",
    ]
    outcome = invoke("eval", *args)
    assert outcome.exit_code == 0, outcome.output
    assert "broken.jpg" in outcome.stderr
    document = json.loads(outcome.stdout)
    rows = {row["transform"]: row for row in document["models"]["dreamsim-dino"]}
    assert set(rows) == {
        "jpeg-q30",
        "jpeg-q60",
        "resize-50%",
        "crop-10-30%",
        "colour-jitter",
        "rotate-5-15deg",
        "flip",
        "text-overlay",
    }
    assert all(row["copies"] == 5 for row in rows.values())
    assert rows["jpeg-q60"]["found_at_1"] == 1.0 and rows["jpeg-q60"]["original_at_k"] == 1.0
    assert all(0 <= row["distance_p50"] <= row["distance_p95"] for row in rows.values())
    made = Path(document["copies_folder"])
    files = sorted(made.rglob("*.jpg"))
    assert len(files) == 8 * 5
    assert (made / "flip" / "o0.png.jpg").exists() and (made / "flip" / "o0.jpg.jpg").exists()
    with Image.open(made / "flip" / "o1.jpg.jpg") as flipped, Image.open(folder / "o1.jpg") as original:
        assert flipped.size == original.size
    stamps = [f.stat().st_mtime_ns for f in files]
    assert invoke("eval", *args).exit_code == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps  # copies are made once
    shutil.rmtree(made)
