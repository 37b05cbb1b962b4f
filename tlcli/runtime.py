"""Process-wide settings, made once at the start of a command: importing tlcli changes none.

The CLI calls set_up_process() before each command's work (the tests' conftest does too);
a program that embeds tlcli calls it when it wants tlcli's own image-size checks in place of
PIL's and its fast offline fallback for hub weights. Figures need no setting: tlcli.plots
draws on matplotlib Figures without pyplot, so no GUI backend is ever chosen.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

# Without this probe, an offline machine spends ~50 s in huggingface_hub's retries per file.
HUB_PROBE_TIMEOUT_S = 3.0

# What set_up_process asked for. The hub is probed at the first download, not at set-up: a
# command that never downloads (evaluate, predict, local-dir weights) pays no probe.
_process = {"hub_cache_when_unreachable": False, "hub_probed": False}


def set_up_process() -> None:
    """Leave image-size limits to tlcli (data.max_pixels): one error path, the skipped-files
    report, instead of PIL's DecompressionBombWarning at 89 M pixels and its error at twice
    that, whatever --set data.max_pixels says. Hub weights come from the local cache when the
    hub cannot be reached (see before_hub_download)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    _process["hub_cache_when_unreachable"] = True


def hub_reachable() -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect within a few seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def before_hub_download() -> None:
    """Called before weights are fetched from the hub: once per process, after set_up_process,
    switch huggingface_hub to its local cache (HF_HUB_OFFLINE) when the hub cannot be reached,
    so that missing weights fail in seconds and cached ones load."""
    if not _process["hub_cache_when_unreachable"] or _process["hub_probed"]:
        return
    from huggingface_hub import constants

    _process["hub_probed"] = True
    if not constants.HF_HUB_OFFLINE and not hub_reachable():
        constants.HF_HUB_OFFLINE = True
