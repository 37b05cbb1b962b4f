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

from tlcli.config import DEFAULT_MAX_PIXELS
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


SPLIT_OF = {name: split for split, names in SPLIT_NAMES.items() for name in names}


@dataclass(frozen=True)
class Layout:
    """How a data folder is organised: "split" (train/val/test folders of class folders) or
    "flat" (class folders); a split layout's other folders are left out (and named)."""

    kind: str
    splits: dict[str, Path] = field(default_factory=dict)
    left_out: list[Path] = field(default_factory=list)


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


def image_files_under(
    folder: Path,
    max_pixels: int,
    skipped: list[Skipped],
    on_file: Callable[[], None] | None = None,
) -> list[Path]:
    """The usable images below folder, in a stable order: the walk's rules (hidden files and
    `__MACOSX` left out, links to folders not followed), an image extension, then the header.
    Every file passed over but hidden ones is added to skipped with its reason. A class
    folder's images (the scan) and a folder given to predict are found by this one walk."""
    images: list[Path] = []
    for path in _walk_files(folder, skipped):
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
    return images


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
        found[class_dir.name] = image_files_under(class_dir, max_pixels, skipped, on_file)
    return found


def _folder_kind(folder: Path) -> str:
    """ "split" if folder holds folders (a split's class folders), else "class" if it holds
    image files (a class folder), else "empty"."""
    try:
        with os.scandir(folder) as entries:
            visible = [e for e in entries if not _is_hidden(e.name)]
            if any(e.is_dir() for e in visible):
                return "split"
            images = (e for e in visible if Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
            return "class" if any(e.is_file() for e in images) else "empty"
    except OSError:  # unlistable: the scan names it
        return "empty"


def _names(folders: list[Path]) -> str:
    return ", ".join(f"{p.name}/" for p in folders)


def detect_layout(root: Path) -> Layout:
    """Split or flat layout, decided by names and contents; DataError where they conflict.

    A folder named like a split (train, val, test, ...) is a split only when it holds class
    folders. One that holds images is a class: a flat set of vehicles has a class "train".
    Split folders next to folders of images have no single reading, so they are refused.
    """
    named: dict[str, list[Path]] = {}
    others: list[Path] = []
    for child in _list_class_dirs(root):
        split = SPLIT_OF.get(child.name.lower())
        if split is None:
            others.append(child)
        else:
            named.setdefault(split, []).append(child)
    kinds = {p: _folder_kind(p) for folders in named.values() for p in folders}
    if "split" not in kinds.values():
        return Layout("flat")
    as_classes = [p for p, kind in kinds.items() if kind == "class"]
    as_splits = [p for p, kind in kinds.items() if kind == "split"]
    if as_classes:
        raise DataError(
            f"{root}: {_names(as_splits)} holds class folders but {_names(as_classes)} holds "
            f"images; put every split's images in {root}/<split>/<class>/"
        )
    image_folders = [p for p in others if _folder_kind(p) == "class"]
    if image_folders:
        raise DataError(
            f"{root} holds split folders ({_names(as_splits)}) and folders of images "
            f"({_names(image_folders)}); use {root}/<class>/ or {root}/train|val[|test]/<class>/"
            ", not both"
        )
    for split, folders in named.items():
        if len(folders) > 1:
            raise DataError(
                f"{root} has {len(folders)} {split} folders ({_names(folders)}); keep one"
            )
    return Layout("split", {s: folders[0] for s, folders in named.items()}, others)


def scan_image_folder(
    root: Path, max_pixels: int = DEFAULT_MAX_PIXELS, on_file: Callable[[], None] | None = None
) -> FolderScan:
    """Scan root; raise DataError when it cannot be trained on at all."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    skipped: list[Skipped] = []
    warnings: list[str] = []
    detected = detect_layout(root)
    if detected.kind == "split":
        if "train" not in detected.splits:
            raise DataError(
                f"{root} has {_names(list(detected.splits.values()))} but no train/ folder: "
                f"put the training images in {root}/train/<class>/ (tlcli evaluate scores a "
                "model on it as it is)"
            )
        layout = "split"
        if detected.left_out:
            warnings.append(
                f"{_names(detected.left_out)} in {root}: not a train/val/test split, left out"
            )
        found = {
            split: _scan_class_folders(path, max_pixels, skipped, on_file)
            for split, path in detected.splits.items()
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


def scan_class_folders(
    folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS, on_file: Callable[[], None] | None = None
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
