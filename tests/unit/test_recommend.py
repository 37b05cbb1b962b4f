"""The 2x2 decision (pure, table-tested) and `tlcli recommend` end to end on a tiny folder."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.config import Config
from tlcli.recommend.decide import (
    EARLIER_STAGE_MARGIN,
    FEW_STAGES,
    LOTS_PER_CLASS,
    SMALL_PER_CLASS,
    Signals,
    apply_recommendation,
    chance_corrected,
    decide,
)

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # test_resnet-like, input first


def signals(per_class: float, probe: float | None, classes: int = 2, **kwargs) -> Signals:
    return Signals(
        num_classes=classes,
        num_train=int(per_class * classes),
        per_class_median=per_class,
        stage_names=STAGES,
        probe_accuracy=probe,
        num_sampled=200 if probe is not None else 0,
        **kwargs,
    )


# (case, signals, strategy, trainable stages, similarity, head warmup epochs)
GRID = [
    ("small + similar", signals(100, 0.97), "head-only", 0, "similar", 0),
    ("large + similar", signals(400, 0.95, classes=10), "partial", FEW_STAGES, "similar", 0),
    ("lots + dissimilar", signals(LOTS_PER_CLASS, 0.40, classes=10), "full", 5, "dissimilar", 0),
    ("large + dissimilar", signals(400, 0.50, classes=10), "partial", FEW_STAGES, "dissimilar", 0),
    ("small + dissimilar", signals(100, 0.40, classes=10), "partial", FEW_STAGES, "dissimilar", 0),
    (
        "earlier stage beats the last: retrain from after it",
        signals(
            100,
            0.90,
            stage_probes=(("layer1", 0.99), ("layer2", 0.90), ("layer4", 0.90)),
        ),
        "partial",
        3,
        "dissimilar",
        0,
    ),
    (
        "earlier stage within the margin: similar",
        signals(
            100,
            0.97,
            stage_probes=(("layer1", 0.97 + EARLIER_STAGE_MARGIN / 2), ("layer4", 0.97)),
        ),
        "head-only",
        0,
        "similar",
        0,
    ),
    (
        "puzzled ImageNet head + middling probe",
        signals(100, 0.9, head_max_prob=0.05),
        "partial",
        FEW_STAGES,
        "dissimilar",
        0,
    ),
    (
        "puzzled head but near-perfect probe",
        signals(100, 0.99, head_max_prob=0.05),
        "head-only",
        0,
        "similar",
        0,
    ),
    ("no probe measured: size decides", signals(100, None), "head-only", 0, "unknown", 0),
    ("no probe, large", signals(400, None), "partial", FEW_STAGES, "unknown", 0),
]


@pytest.mark.parametrize(
    "case,sig,strategy,stages,similarity,warmup", GRID, ids=[row[0] for row in GRID]
)
def test_decide_grid(case, sig, strategy, stages, similarity, warmup):
    rec = decide(sig)
    assert (rec.strategy, rec.trainable_stages, rec.similarity, rec.head_warmup_epochs) == (
        strategy,
        stages,
        similarity,
        warmup,
    )
    assert rec.size == ("small" if sig.per_class_median < SMALL_PER_CLASS else "large")


def test_reasons_quote_the_measured_numbers():
    rec = decide(signals(122.5, 0.98, stage_probes=(("layer2", 0.90), ("layer4", 0.97))))
    text = " ".join(rec.reasons)
    assert "122.5" in text and str(SMALL_PER_CLASS) in text
    assert "0.980" in text and "200 sampled images" in text
    assert "layer2: 0.900" in text and "layer4: 0.970" in text
    assert "head-only" in rec.reasons[-1]


def test_expected_head_only_interval_brackets_the_probe():
    rec = decide(signals(100, 0.9))
    low, high = rec.expected_head_only
    assert low < 0.9 < high and high - low < 0.1


def test_dissimilar_data_below_lots_is_retrained_with_care():
    """Calibrated on digits (little and enough data): the top stages with standard
    augmentation and no head-first epoch; retraining everything needs lots of data."""
    for per_class in (100, 400):
        rec = decide(signals(per_class, 0.4, classes=10))
        assert (rec.strategy, rec.trainable_stages) == ("partial", FEW_STAGES)
        assert rec.augment == "standard" and rec.head_warmup_epochs == 0
    assert decide(signals(LOTS_PER_CLASS, 0.4, classes=10)).strategy == "full"


def test_decide_is_pure():
    """The same signals give the same plan whatever was decided before, and a plan shares no
    state with the next one (copies taken now: equal objects that share a list stay equal)."""
    first = [copy.deepcopy(decide(row[1])) for row in GRID]
    again = [decide(row[1]) for row in reversed(GRID)][::-1]
    assert again == first
    again[0].reasons.append("edited by the caller")
    assert decide(GRID[0][1]) == first[0]


def test_chance_corrected():
    assert chance_corrected(0.5, 2) == 0.0
    assert chance_corrected(1.0, 10) == 1.0
    assert chance_corrected(0.55, 10) == pytest.approx(0.5)


def test_apply_recommendation_keeps_user_choices():
    rec = decide(signals(100, 0.4, classes=10, stage_probes=(("layer1", 0.9), ("layer4", 0.5))))
    rec = dataclasses.replace(rec, head_warmup_epochs=1)  # as a JSON plan may say
    cfg = apply_recommendation(Config(), rec)
    assert (cfg.strategy.name, cfg.strategy.trainable_stages) == ("partial", 3)
    assert cfg.strategy.head_warmup_epochs == 1
    user = Config()
    user.strategy.trainable_stages = 1
    assert apply_recommendation(user, rec).strategy.trainable_stages == 1


# --- CLI end to end ----------------------------------------------------------------------------

runner = CliRunner()
TINY = ["--model", "test_resnet", "--set", "model.pretrained=false", "--set", "data.image_size=32"]


def test_cli_recommend_json_on_tiny_folder(image_folder):
    root = image_folder(counts={"red": 12, "blue": 9, "green": 6})
    result = runner.invoke(app, ["recommend", str(root), *TINY, "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    size = report["size"]
    assert size["num_classes"] == 3
    assert size["num_train"] + size["num_val"] == 27
    assert size["per_class_max"] >= size["per_class_min"] > 0
    assert report["duplicates"]["exact_groups"] == 0
    sim = report["similarity"]
    assert 0.0 <= sim["probe_accuracy"] <= 1.0 and sim["num_sampled"] > 0
    rec = report["recommendation"]
    assert rec["strategy"] in ("head-only", "partial", "full")
    assert rec["size"] == "small"  # 9 per class is far below the threshold
    assert any("per class" in r for r in rec["reasons"])


def test_cli_recommend_reports_duplicates_across_the_split(image_folder):
    root = image_folder(counts={"a": 6, "b": 6}, layout="split")
    leaked = root / "train" / "a" / "a_0.png"
    (root / "val" / "a" / "copy_of_a_0.png").write_bytes(leaked.read_bytes())
    result = runner.invoke(app, ["recommend", str(root), *TINY, "--json"])
    assert result.exit_code == 0, result.stderr
    dup = json.loads(result.stdout)["duplicates"]
    assert dup["exact_groups"] >= 1 and dup["cross_split_groups"] >= 1


def test_cli_recommend_missing_folder_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["recommend", str(tmp_path / "nope"), *TINY])
    assert result.exit_code == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in result.stderr
