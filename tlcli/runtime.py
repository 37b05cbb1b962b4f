"""Process-wide settings, made once at the start of a command: importing tlcli changes none.

The CLI calls set_up_process() before each command's work (the tests' conftest does too);
a program that embeds tlcli calls it when it wants tlcli's own image-size checks in place of
PIL's. Figures need no setting: tlcli.plots draws on matplotlib Figures without pyplot, so no
GUI backend is ever chosen.
"""

from __future__ import annotations


def set_up_process() -> None:
    """Leave image-size limits to tlcli (data.max_pixels): one error path, the skipped-files
    report, instead of PIL's DecompressionBombWarning at 89 M pixels and its error at twice
    that, whatever --set data.max_pixels says."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
