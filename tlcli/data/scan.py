"""Scan an image folder: find classes, splits and images, and report every file passed over.

Two layouts: `ROOT/<class>/*` (a val split is made later) and `ROOT/train|val|test/<class>/*`
(used as given). Files are identified by content, not extension, so a PNG named `.jpg` is
fine and a text file named `.jpg` is skipped by name. Nothing here decodes pixels: that
happens once, in the decode cache, where truncated files are caught.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tlcli.data.decode import NOT_AN_IMAGE, size_problem
from tlcli.errors import DataError

# Extensions PIL decodes that people keep photos in; anything else is "not an image".
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jfif",
    }
)
LOOP_REASON = "symbolic link loop (points back to the data folder): not followed"
FOLDER_LINK_REASON = "link to a folder: not followed (it could loop); copy or move the images"
SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class FolderScan:
    """What a folder holds: classes (index order = label order), samples per split."""

    root: Path
    layout: str  # "split" (train/val[/test] folders) or "flat" (class folders)
    classes: list[str]
    splits: dict[str, list[Sample]]  # flat layout: {"all": ...}; split layout: train/val/test
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self, split: str) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.splits.get(split, []):
            counts[self.classes[sample.label]] += 1
        return counts


def no_readable_images(where: str, skipped: int = 0) -> DataError:
    """The one error for input without a single usable image: a path that does not exist, an
    empty folder, only other files, or only images that fail to decode."""
    named = f" ({skipped} file(s) skipped, each named above)" if skipped else ""
    return DataError(
        f"no readable images in {where}{named}; give image files or folders of images "
        "(jpg, png, ...)"
    )


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def identify_image(path: Path, max_pixels: int) -> str | None:
    """Return None when the file looks like a usable image, else the reason it is not.

    Reads the header only (cheap): format, size. Pixels are checked when decoded.
    """
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            width, height = img.size
            fmt = img.format
    except UnidentifiedImageError:
        return NOT_AN_IMAGE
    except PermissionError:
        return "permission denied"
    except Image.DecompressionBombError:
        return f"image too large (over {max_pixels} pixels): possible decompression bomb"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except Exception as exc:  # a malformed header can raise anything inside PIL's parsers
        return f"cannot read: {type(exc).__name__}: {exc}"
    if fmt is None:
        return "not an image (no size or format)"
    return size_problem(width, height, max_pixels)


def _links_back(class_dir: Path, folder: Path) -> bool:
    """A class folder that is a symbolic link to the data folder or above it: a loop that
    would make a bogus class holding every image again."""
    if not class_dir.is_symlink():
        return False
    target, here = class_dir.resolve(), folder.resolve()
    return target == here or target in here.parents


def _list_class_dirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror}; check the path") from None
    return [Path(e.path) for e in entries if not _is_hidden(e.name) and e.is_dir()]


def _walk_files(folder: Path, skipped: list[Skipped]) -> list[Path]:
    """Every non-hidden file below folder, in a stable order; symlinked folders not followed
    (one could loop back up), but named, as are folders that cannot be listed."""

    def unlisted(exc: OSError) -> None:
        skipped.append(Skipped(str(exc.filename), f"cannot list folder: {exc.strerror}"))

    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            skipped.append(Skipped(os.path.join(dirpath, name), FOLDER_LINK_REASON))
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            path = Path(dirpath) / name
            if not path.exists():  # broken link or a symlink loop
                skipped.append(Skipped(str(path), "broken symbolic link or link loop"))
                continue
            files.append(path)
    return files


def _scan_class_folders(
    folder: Path,
    max_pixels: int,
    skipped: list[Skipped],
    on_file: Callable[[], None] | None,
) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for class_dir in _list_class_dirs(folder):
        if _links_back(class_dir, folder):
            skipped.append(Skipped(str(class_dir), LOOP_REASON))
            continue
        images: list[Path] = []
        for path in _walk_files(class_dir, skipped):
            if on_file is not None:
                on_file()
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(str(path), f"not an image file (extension {path.suffix!r})"))
                continue
            reason = identify_image(path, max_pixels)
            if reason is None:
                images.append(path)
            else:
                skipped.append(Skipped(str(path), reason))
        found[class_dir.name] = images
    return found


def _find_split_dirs(root: Path) -> dict[str, Path]:
    children = {p.name.lower(): p for p in _list_class_dirs(root)}
    splits = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if name in children:
                splits[split] = children[name]
                break
    return splits


def scan_image_folder(
    root: Path, max_pixels: int = 178_956_970, on_file: Callable[[], None] | None = None
) -> FolderScan:
    """Scan root; raise DataError when it cannot be trained on at all."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    skipped: list[Skipped] = []
    warnings: list[str] = []
    split_dirs = _find_split_dirs(root)
    if "train" in split_dirs:
        layout = "split"
        found = {
            split: _scan_class_folders(path, max_pixels, skipped, on_file)
            for split, path in split_dirs.items()
        }
        per_split = found
        train = per_split["train"]
    else:
        layout = "flat"
        train = _scan_class_folders(root, max_pixels, skipped, on_file)
        per_split = {"all": train}

    empty = [c for c, imgs in train.items() if not imgs]
    for name in empty:
        warnings.append(f"class folder {name!r} has no usable images and is left out")
    classes = [c for c, imgs in train.items() if imgs]
    where = root / "train" if layout == "split" else root
    if not classes:
        raise DataError(
            f"no images found in {where}: expected {where}/<class name>/<image files> "
            "(jpg, png, ...)"
        )
    if len(classes) < 2:
        raise DataError(
            f"only one class ({classes[0]!r}) in {where}: a classifier needs at least two "
            "class folders"
        )
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, by_class in per_split.items():
        unknown = [c for c, imgs in by_class.items() if imgs and c not in index]
        if unknown:
            raise DataError(
                f"{split}/ has classes that train/ does not: {', '.join(sorted(unknown))}; "
                "add them to train/ or remove them"
            )
        splits[split] = [Sample(p, index[c]) for c, imgs in by_class.items() for p in imgs]
        if split != "train" and split != "all":
            missing = [c for c in classes if not by_class.get(c)]
            if missing:
                warnings.append(f"{split}/ has no images of: {', '.join(missing)}")
    return FolderScan(root, layout, classes, splits, skipped, warnings)


def find_split_dirs(root: Path) -> dict[str, Path]:
    """The train/val/test folders directly under root (any of their usual spellings)."""
    return _find_split_dirs(Path(root))


def scan_class_folders(
    folder: Path, max_pixels: int = 178_956_970, on_file: Callable[[], None] | None = None
) -> FolderScan:
    """Scan `folder/<class>/*` as it is, for evaluation: no split, no training checks.

    Any number of classes is fine, one included (an evaluation set may hold a subset of the
    classes a model knows); empty class folders are left out with a warning. Labels index
    the returned `classes` (sorted folder names); callers map them to a model's classes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist or is not a folder")
    skipped: list[Skipped] = []
    found = _scan_class_folders(folder, max_pixels, skipped, on_file)
    warnings = [
        f"class folder {c!r} has no usable images and is left out"
        for c, imgs in found.items()
        if not imgs
    ]
    classes = [c for c, imgs in found.items() if imgs]
    if not classes:
        raise DataError(
            f"no images found in {folder}: expected {folder}/<class name>/<image files> "
            "(jpg, png, ...)"
        )
    samples = [Sample(p, label) for label, c in enumerate(classes) for p in found[c]]
    return FolderScan(folder, "flat", classes, {"all": samples}, skipped, warnings)
