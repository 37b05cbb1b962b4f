"""report.html: self-contained, escaped, usable at 400 classes, rebuilt by `tlcli report`, and
rendered by a real browser (headless Chromium) with its gallery images loaded."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from browser import dump_dom, find_chromium, screenshot
from corpus import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.errors import EXIT_RUN_DIR
from tlcli.evaluate import model_summary
from tlcli.metrics import classification_report
from tlcli.report import (
    GALLERY_SIZE,
    evaluate_report_html,
    finetune_report_html,
    write_report,
)

runner = CliRunner()
NASTY = '<img src=x onerror="alert(1)">&'  # a class name that is also markup
TINY_RUN = [
    "--model", "test_resnet", "--no-pretrained", "--strategy", "full", "--epochs", "2",
    "--image-size", "64", "--batch-size", "8", "--workers", "1", "--device", "cpu",
]  # fmt: skip


def synthetic_evaluation(root: Path, num_classes: int, n: int, images: int = 0) -> Path:
    """A report dir holding a report.json as evaluate writes it; the first `images` files
    exist on disk (so the gallery has thumbnails), the rest are gone."""
    rng = np.random.default_rng(0)
    classes = [f"{NASTY} {i}" for i in range(num_classes)]
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    paths = [root / "images" / f'file "{i}" <b>.png' for i in range(n)]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path in paths[:images]:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    report = classification_report(probs, labels, classes, [str(p) for p in paths])
    name = "run <1>/best.pt"
    out = root / "report"
    out.mkdir(parents=True)
    doc = {
        "data_dir": str(root / "images"),
        "split": "val",
        "folders": [str(root / "images")],
        "num_images": n,
        "classes": classes,
        "tta": None,
        "models": [
            {"name": name, "weights": "raw", "summary": model_summary(report), "report": report}
        ],
        "ensemble": None,
        "primary": name,
        "skipped": [],
        "warnings": [],
    }
    (out / "report.json").write_text(json.dumps(doc))
    return out


def test_every_name_is_escaped(tmp_path):
    out = synthetic_evaluation(tmp_path, 3, 30, images=30)
    text = write_report(out).read_text()
    assert NASTY not in text and "<b>.png" not in text  # no user text reaches the page raw
    assert html_escaped(NASTY) in text and "&lt;b&gt;.png" in text
    assert "<script>" in text and text.count("<script>") == 1  # only the page's own
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text  # nothing fetched


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_confusion_matrix_is_a_compact_table_at_400_classes(tmp_path):
    out = synthetic_evaluation(tmp_path, 400, 2000)
    text = write_report(out).read_text()
    matrix = text[text.index('<table class="cm">') :]
    matrix = matrix[: matrix.index("</table>")]
    assert matrix.count("<tr>") == 401  # header + one row per class, no 19,200 px image
    assert matrix.count("<td") == 400 * 400
    assert len(text) < 2_000_000  # zero cells are empty: 400 classes stay under 2 MB
    assert 'class="scroll"' in text


def test_calibration_is_drawn_before_and_after_when_the_report_has_both(tmp_path):
    out = synthetic_evaluation(tmp_path, 3, 30)
    doc = json.loads((out / "report.json").read_text())
    detail = doc["models"][0]["report"]
    assert evaluate_report_html(doc, {}).count("<svg") == 1
    detail["calibration"] = {
        "temperature": 1.7,
        "before": {"ece": 0.21, "reliability": detail["reliability"]},
        "after": {"ece": 0.04, "reliability": detail["reliability"]},
    }
    text = evaluate_report_html(doc, {})
    assert text.count("<svg") == 2
    assert "before calibration (ECE 0.210)" in text and "(T = 1.70) (ECE 0.040)" in text


def test_finetune_report_shows_the_probe_baseline_only_when_measured():
    row = {"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4, "val_acc": 0.9}
    summary = {
        "run_dir": "runs/x", "data_dir": "d", "model": "m", "strategy": "partial",
        "trainable_stages": 2, "strategy_reasons": [], "classes": ["a", "b"], "num_train": 4,
        "num_val": 2, "val_acc": 0.9, "best_epoch": 1, "epochs_run": 1, "trainable_params": 1,
        "total_params": 2, "device": "cpu", "seconds": 1.0, "paths": {"best": "b.pt"},
        "history": [row],
    }  # fmt: skip
    assert "linear probe" not in finetune_report_html(summary, None)
    probe_row = {**row, "epoch": 0, "val_acc": 0.85}
    summary.update(probe_val_acc=0.85, gain_over_probe=0.05, history=[probe_row, row])
    text = finetune_report_html(summary, None)
    assert "+0.0500" in text and "0 (probe)" in text


def test_finetune_and_evaluate_write_report_html_and_tlcli_report_rebuilds_it(tmp_path):
    data = make_image_folder(tmp_path / "data", {"red": 8, "blue": 8}, side=40)
    run = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(data), *TINY_RUN, "--out", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    for text in ("plan", "epochs", "update/weight ratio", "data:image/png;base64,", "layer4"):
        assert text in page  # layer4: a stage of test_resnet, from the plan
    best = json.loads((run / "summary.json").read_text())["best_epoch"]
    # the epochs table marks the best (epoch 0 is LP-FT's probe)
    assert re.search(rf"<td[^>]*>{best}( \(probe\))? \*</td>", page)
    (run / "report.html").unlink()
    again = runner.invoke(app, ["report", str(run)])
    assert again.exit_code == 0, again.output
    assert (run / "report.html").read_text() == page

    report_dir = tmp_path / "eval"
    result = runner.invoke(
        app, ["evaluate", str(run / "best.pt"), str(data), "--report-dir", str(report_dir)]
    )
    assert result.exit_code == 0, result.output
    page = (report_dir / "report.html").read_text()
    assert "confusion matrix" in page and "red" in page and "blue" in page
    assert runner.invoke(app, ["report", str(report_dir)]).exit_code == 0
    assert (report_dir / "report.html").read_text() == page

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(app, ["report", str(empty)])
    assert refused.exit_code == EXIT_RUN_DIR
    assert "neither report.json nor summary.json" in refused.output


def test_report_renders_in_chromium_with_its_gallery_images_loaded(tmp_path):
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI: chromium is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out = synthetic_evaluation(tmp_path, 5, 60, images=60)
    page = write_report(out)
    errors = json.loads((out / "report.json").read_text())["models"][0]["report"]
    shown = min(GALLERY_SIZE, len(errors["misclassified"]))
    assert shown > 0
    dom = dump_dom(page)
    assert f'data-images="{shown}/{shown}"' in dom  # every thumbnail decoded, naturalWidth > 0
    png = screenshot(page, tmp_path / "shot.png", 1280, 1600)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1280)
    assert (pixels < 200).mean() > 0.02  # text, tables and figures drawn, not a blank page
    assert pixels.std() > 20


def test_update_ratio_of_a_new_head_is_judged_only_after_the_loops_grace_epochs():
    rows = [
        {"epoch": e, "val_acc": 0.5, "update_ratio": 0.4, "backbone_update_ratio": 2e-4}
        for e in (1, 2)
    ]
    summary = {
        "run_dir": "r", "data_dir": "d", "model": "m", "strategy": "full", "trainable_stages": 0,
        "classes": ["a"], "num_train": 1, "num_val": 1, "val_acc": 0.5, "best_epoch": 1,
        "epochs_run": 2, "trainable_params": 1, "total_params": 1, "device": "cpu",
        "seconds": 1.0, "paths": {"best": "b"}, "history": rows,
    }  # fmt: skip
    text = finetune_report_html(summary, None)
    assert "e-01 high" not in text and "not judged" in text  # a fresh head: not flagged
    summary["history"] = [*rows, {**rows[0], "epoch": 3}]
    text = finetune_report_html(summary, None)
    assert "4.0e-01 high" in text and "the learning rate may be off" in text
