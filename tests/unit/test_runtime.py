"""runtime.set_up_process owns the process-wide settings: PIL's image-size limit and the
fallback of hub weights to the local cache when the hub cannot be reached (HF_HUB_OFFLINE),
decided once, at the first hub download, and never for local-dir: weights."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import constants

from tests.corpus import make_local_dir_model
from tlcli import runtime
from tlcli.errors import ModelError
from tlcli.models import create_model

# A timm name with hub weights (timm/test_resnet.r160_in1k), never in the test's empty cache.
HUB_NAME = "test_resnet.r160_in1k"
# Offline with nothing cached, the failure is one lookup in the cache: seconds, not the ~50 s
# of huggingface_hub's retries per file.
FAST_FAILURE_S = 10.0


@pytest.fixture
def hub(monkeypatch, tmp_path) -> list[str]:
    """A fresh process state (set_up_process not called yet), huggingface_hub online by its
    settings, an empty cache, and a hub that cannot be reached: returns the probes made."""
    probes: list[str] = []

    def unreachable() -> bool:
        probes.append("probe")
        return False

    monkeypatch.setattr(
        runtime, "_process", {"hub_cache_when_unreachable": False, "hub_probed": False}
    )
    monkeypatch.setattr(runtime, "hub_reachable", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return probes


def test_without_set_up_tlcli_leaves_huggingface_hub_alone(hub):
    runtime.before_hub_download()
    assert hub == [] and constants.HF_HUB_OFFLINE is False


def test_set_up_probes_the_hub_once_at_the_first_download(hub):
    runtime.set_up_process()
    assert hub == [], "set-up itself probes nothing: a command that never downloads pays none"
    runtime.before_hub_download()
    runtime.before_hub_download()
    assert hub == ["probe"] and constants.HF_HUB_OFFLINE is True


def test_an_offline_setting_is_kept_without_a_probe(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    runtime.set_up_process()
    runtime.before_hub_download()
    assert hub == [] and constants.HF_HUB_OFFLINE is True


def test_hub_weights_offline_fail_fast_with_what_to_do(hub):
    runtime.set_up_process()
    started = time.perf_counter()
    with pytest.raises(ModelError, match="local-dir:PATH"):
        create_model(HUB_NAME, 2, pretrained=True)
    assert time.perf_counter() - started < FAST_FAILURE_S
    assert hub == ["probe"]


def test_local_dir_weights_load_offline_without_a_probe(hub, tmp_path):
    runtime.set_up_process()
    folder = make_local_dir_model(tmp_path / "weights")
    model = create_model(f"local-dir:{folder}", 2, pretrained=True)
    assert model.get_classifier().out_features == 2
    assert hub == [] and constants.HF_HUB_OFFLINE is False


def test_random_init_needs_no_probe(hub):
    runtime.set_up_process()
    create_model(HUB_NAME, 2, pretrained=False)
    assert hub == []
