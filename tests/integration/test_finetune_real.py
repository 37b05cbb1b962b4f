"""finetune and recommend on the real Lite0 weights and hymenoptera (../shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

WEIGHTS = "tf_efficientnet_lite0.in1k"


@pytest.fixture(scope="module")
def real(shared_dir: Path) -> tuple[Path, str]:
    data = shared_dir / "data" / "hymenoptera_data"
    weights = shared_dir / "weights" / WEIGHTS
    if not (data.is_dir() and (weights / "model.safetensors").is_file()):
        pytest.skip("../shared data and weights are not beside the checkout")
    return data, f"local-dir:{weights}"


def run_cli(*args: str, cache: Path) -> dict:
    """The installed CLI as a user runs it; --json output parsed."""
    env = {"TLCLI_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tlcli", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def run_finetune(data: Path, model: str, out: Path, cache: Path, *options: str) -> dict:
    return run_cli(
        "finetune", str(data), "--model", model, "--out", str(out), *options, cache=cache
    )


def backbone_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def pretrained_state(model: str) -> dict[str, torch.Tensor]:
    from tlcli.models import create_model

    return create_model(model, num_classes=2, pretrained=True).state_dict()


def test_head_only_reaches_094_and_backbone_is_bit_identical(real, tmp_path, tmp_cache_dir):
    data, model = real
    out = tmp_path / "run"
    summary = run_finetune(
        data, model, out, tmp_cache_dir, "--strategy", "head-only", "--epochs", "5"
    )
    assert summary["strategy"] == "head-only"
    assert summary["val_acc"] >= 0.94
    ckpt = torch.load(out / "best.pt", weights_only=True)
    trained = backbone_tensors(ckpt["state_dict"])
    reference = backbone_tensors(pretrained_state(model))
    assert trained.keys() == reference.keys()
    # Weights and BatchNorm buffers (running mean/var, num_batches_tracked) untouched.
    moved = [k for k in reference if not torch.equal(trained[k], reference[k])]
    assert moved == []
    assert any("running_mean" in k for k in reference)
    # The head did train.
    assert ckpt["state_dict"]["classifier.weight"].abs().sum() > 0


def test_partial_one_epoch_keeps_early_stages_frozen(real, tmp_path, tmp_cache_dir):
    data, model = real
    out = tmp_path / "run"
    summary = run_finetune(
        data,
        model,
        out,
        tmp_cache_dir,
        "--strategy",
        "partial",
        "--trainable-stages",
        "2",
        "--epochs",
        "1",
    )
    assert summary["val_acc"] >= 0.93
    ckpt = torch.load(out / "last.pt", weights_only=True)
    frozen = [s["name"] for s in ckpt["plan"]["stages"] if not s["trainable"]]
    trainable = [s["name"] for s in ckpt["plan"]["stages"] if s["trainable"]]
    assert "stem" in frozen and "head" in trainable and len(trainable) == 3
    reference = pretrained_state(model)
    state = ckpt["state_dict"]
    early = [k for k in reference if k.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1."))]
    assert early and all(torch.equal(state[k], reference[k]) for k in early)
    # The last stage did move, BatchNorm statistics included.
    late = [k for k in reference if k.startswith("conv_head") or k.startswith("bn2")]
    assert any(not torch.equal(state[k], reference[k]) for k in late)


def test_recommend_hymenoptera_is_small_and_similar(real, tmp_cache_dir):
    data, model = real
    report = run_cli("recommend", str(data), "--model", model, cache=tmp_cache_dir)
    decision = report["recommendation"]
    assert decision["strategy"] in ("head-only", "partial")
    if decision["strategy"] == "partial":
        assert decision["trainable_stages"] <= 2
    assert report["similarity"]["probe_accuracy"] >= 0.9
    assert any("probe" in reason for reason in decision["reasons"])
