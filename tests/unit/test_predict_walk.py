"""predict walks a folder as finetune's scan does: the same images kept, the same files named.

Before predict used data/scan.py's walk it had its own: it walked into `__MACOSX/`, took a PNG
named `.dat` by its content, dropped links to folders and unlistable folders without a word,
and gave broken links and non-image files other reasons than the scan.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from corpus import add_filesystem_cases, jpeg_bytes, make_bad_image_folder, random_image, unlock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlcli.data.scan import scan_class_folders
from tlcli.errors import DataError
from tlcli.predict import collect_image_files

MACOSX_COPY = "ants/__MACOSX/ants_0.jpg"  # a real JPEG inside __MACOSX: the scan leaves it out
APPLE_DOUBLE = "ants/__MACOSX/._ants_0.jpg"  # the resource fork a macOS zip puts beside it
PNG_NAMED_DAT = "ants/photo.dat"  # an image by content, not by extension
DANGLING_LINK = "bees/gone.jpg"  # a link to a file that does not exist


def add_predict_cases(root: Path) -> None:
    rng = np.random.default_rng(3)
    (root / MACOSX_COPY).parent.mkdir(parents=True)
    (root / MACOSX_COPY).write_bytes(jpeg_bytes(random_image(rng, 0)))
    (root / APPLE_DOUBLE).write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    random_image(rng, 0).save(root / PNG_NAMED_DAT, format="PNG")
    (root / DANGLING_LINK).symlink_to("nowhere.jpg")


def scan_of_each_class(root: Path) -> dict[str, tuple[list[Path], set[tuple[str, str]]]]:
    """{class folder: (its images, its files passed over)} as finetune's scan finds them."""
    scan = scan_class_folders(root)
    found = {}
    for label, name in enumerate(scan.classes):
        prefix = str(root / name) + os.sep
        images = [s.path for s in scan.splits["all"] if s.label == label]
        passed_over = {(s.path, s.reason) for s in scan.skipped if s.path.startswith(prefix)}
        found[name] = (images, passed_over)
    return found


def test_predict_and_the_scan_agree_on_a_hostile_folder(tmp_path):
    root = tmp_path / "data"
    make_bad_image_folder(root)
    add_filesystem_cases(root)
    add_predict_cases(root)
    try:
        expected = scan_of_each_class(root)
        assert set(expected) == {"ants", "bees", "crème brûlée"}
        for name, (images, passed_over) in expected.items():
            files, skipped = collect_image_files([root / name])
            assert files == images, name
            assert {(s.path, s.reason) for s in skipped} == passed_over, name
    finally:
        unlock(root)
    # The cases the old walk got wrong are in the corpus, each handled the scan's way.
    ants_images, ants_skipped = expected["ants"]
    assert root / MACOSX_COPY not in ants_images
    assert str(root / APPLE_DOUBLE) not in {path for path, _ in ants_skipped}
    assert (str(root / PNG_NAMED_DAT), "not an image file (extension '.dat')") in ants_skipped
    bees_skipped = dict(expected["bees"][1])
    assert "link to a folder" in bees_skipped[str(root / "bees/more ants")]
    assert bees_skipped[str(root / DANGLING_LINK)] == "broken symbolic link or link loop"


def test_a_file_named_on_the_command_line_is_taken_by_its_content(tmp_path):
    """The walk's extension rule is for folders; a file the user names is read as it is."""
    path = tmp_path / "photo.dat"
    random_image(np.random.default_rng(0), 0).save(path, format="PNG")
    assert collect_image_files([path]) == ([path], [])
    files, skipped = collect_image_files([tmp_path, path])  # named and walked: used once
    assert files == [path] and skipped == []


FOLDERS = st.sampled_from(["", "sub", ".hidden", "__MACOSX", "__MACOSX_x", "sub/deeper"])
NAMES = st.sampled_from(["a.jpg", "B.PNG", ".c.jpg", "__MACOSXd.jpg", "e.txt", "f.dat", "g"])
CONTENTS = st.sampled_from(["image", "text", "empty"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(FOLDERS, NAMES, CONTENTS), min_size=1, max_size=8))
def test_predict_and_the_scan_agree_on_any_tree(entries):
    rng = np.random.default_rng(0)
    base = Path(tempfile.mkdtemp())
    try:
        folder = base / "cls"
        folder.mkdir()
        for sub, name, content in entries:
            path = folder / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {"image": jpeg_bytes(random_image(rng, 0)), "text": b"notes\n", "empty": b""}
            path.write_bytes(data[content])
        files, skipped = collect_image_files([folder])
        try:
            scan = scan_class_folders(base)
        except DataError:  # no image at all: the scan refuses the folder, predict finds none
            assert files == []
            return
        assert files == [s.path for s in scan.splits["all"]]
        assert {(s.path, s.reason) for s in skipped} == {(s.path, s.reason) for s in scan.skipped}
    finally:
        shutil.rmtree(base)
