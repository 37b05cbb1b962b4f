"""`tlcli doctor` on a generated folder with planted label errors, and `finetune --cv K`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from corpus import make_image_folder, tree_digest
from PIL import Image
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.data.manifest import read_manifest
from tlcli.errors import EXIT_CONFIG

TINY_MODEL = [
    "--model", "test_resnet", "--set", "model.pretrained=false", "--set", "data.image_size=32",
    "--set", "data.workers=1", "--device", "cpu",
]  # fmt: skip
runner = CliRunner()


def planted_folder(root: Path) -> list[str]:
    """Three colour classes; three images of class a filed under b and c (label errors)."""
    make_image_folder(root, {"a": 12, "b": 12, "c": 12}, side=32)
    wrong = []
    for k, target in enumerate(("b", "c", "b")):
        rel = f"{target}/really_a_{k}.png"
        shutil.copy(root / "a" / f"a_{k}.png", root / rel)
        (root / "a" / f"a_{k}.png").unlink()
        wrong.append(rel)
    return wrong


def test_doctor_finds_planted_label_errors_and_touches_nothing(tmp_path):
    data = tmp_path / "data"
    wrong = planted_folder(data)
    before = tree_digest(data)
    out, relabel = tmp_path / "report", tmp_path / "fixed.csv"
    args = ["doctor", str(data), *TINY_MODEL, "--folds", "3", "--out", str(out)]
    result = runner.invoke(app, [*args, "--write-relabel", str(relabel), "--json"])
    assert result.exit_code == 0, result.output
    assert tree_digest(data) == before, "doctor changed the data folder"
    report = json.loads(result.stdout)
    flagged = [item["path"] for item in report["label_issues"]]
    assert set(wrong) <= set(flagged[: 2 * len(wrong)]), flagged
    for item in report["label_issues"]:
        if item["path"] in wrong:
            assert item["suggested_label"] == "a" and item["given_label"] != "a"
    assert len(report["fold_accuracy"]) == 3

    rows = list(csv.DictReader((out / "issues.csv").open()))
    assert list(rows[0])[:4] == ["path", "given_label", "suggested_label", "score"]
    assert {r["path"] for r in rows if r["issue"] == "label"} == set(flagged)
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width >= 8 * 176 and sheet.height > 176

    # The relabel manifest goes back in as DATA, with the suggested labels applied.
    fixed = read_manifest(relabel)
    labels = {Path(s.path).resolve(): fixed.classes[s.label] for s in fixed.splits["all"]}
    assert len(labels) == 36
    for rel in wrong:
        assert labels[(data / rel).resolve()] == "a"


def test_doctor_refuses_to_write_under_the_data_folder(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    before = tree_digest(data)
    for option in ("--out", "--write-relabel"):
        target = data / "a" / ("report" if option == "--out" else "fixed.csv")
        result = runner.invoke(app, ["doctor", str(data), *TINY_MODEL, option, str(target)])
        assert result.exit_code == EXIT_CONFIG, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "inside the data folder" in lines[0]
    assert tree_digest(data) == before


def test_finetune_cv_reports_mean_and_spread_over_folds(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 9, "b": 9, "c": 9})
    args = ["finetune", str(data), *TINY_MODEL, "--strategy", "head-only", "--cv", "3"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    cv = json.loads((tmp_path / "run" / "summary.json").read_text())["cv"]
    assert cv["folds"] == 3 and len(cv["fold_accuracy"]) == 3 and cv["images"] == 27
    assert sorted(cv["fold_sizes"]) == [9, 9, 9]
    assert abs(cv["mean"] - sum(cv["fold_accuracy"]) / 3) < 1e-12 and cv["std"] >= 0
    assert "3-fold cross-validation on 27 train+val images" in result.stderr
    assert "cross-validation" in result.stdout


def test_cv_needs_head_only(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 4})
    args = ["finetune", str(data), *TINY_MODEL, "--strategy", "partial", "--cv", "3"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == EXIT_CONFIG
    assert "--cv needs the head-only L-BFGS fit" in result.stderr
    assert not (tmp_path / "run").exists()


def test_recommend_counts_label_issues_in_its_sample():
    import numpy as np

    from tlcli.recommend.measure import sample_label_issues

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    features = rng.normal(0, 0.3, (90, 16)) + np.eye(16)[labels] * 4
    noisy = labels.copy()
    noisy[[0, 31, 62]] = [1, 2, 0]  # three flipped labels
    assert sample_label_issues(features, labels, 3, 5, 0) == 0
    assert sample_label_issues(features, noisy, 3, 5, 0) >= 3
    assert sample_label_issues(features[:12], labels[:12], 3, 5, 0) is None  # too few per class
