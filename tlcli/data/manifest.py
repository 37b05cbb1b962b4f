"""CSV/JSONL manifests: labels kept in a file, not in folder names (timm PR #891, TAO, fastai).

A manifest has the columns `path,label[,split][,group]`; paths are relative to the manifest
(absolute paths are fine). It is read into the same FolderScan as a folder, with samples in
the order a folder scan gives them (by class, then path), so a manifest listing a folder's
files gives the same split and, with a seed, the same run. A bad row is a one-line error that
names the row; an unreadable image is skipped and named, as in a folder.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tlcli.config import DEFAULT_MAX_PIXELS
from tlcli.data.scan import (
    SPLIT_NAMES,
    FolderScan,
    Sample,
    Skipped,
    identify_image,
    scan_image_folder,
)
from tlcli.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".jsonl")
REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "group")
# Accepted spellings of a split value, as for split folders (val, valid, validation, ...).
SPLIT_OF_VALUE = {name: split for split, names in SPLIT_NAMES.items() for name in names}


@dataclass
class ManifestScan(FolderScan):
    """A FolderScan read from a manifest; `groups` maps a sample's path to its group."""

    manifest: Path | None = None
    groups: dict[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestRow:
    number: int  # the line of the file (CSV: the header is line 1)
    path: str
    label: str
    split: str | None
    group: str | None


def is_manifest(path: Path) -> bool:
    """A file named .csv or .jsonl (a folder is always an image folder)."""
    path = Path(path)
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


def _decode_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror}; check the path") from None
    try:
        return data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"manifest {path} line {line}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def _check_columns(path: Path, columns: list[str], where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"manifest {path} {where}: no {' or '.join(missing)} column (found: "
            f"{', '.join(columns) or 'none'}); the columns are path,label[,split][,group]"
        )


def _cell(record: dict, key: str) -> str | None:
    value = record.get(key)
    return None if value is None else str(value).strip()


def parse_csv(path: Path, text: str) -> list[ManifestRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        lines = list(reader)
    except csv.Error as exc:
        raise DataError(
            f"manifest {path} line {reader.line_num}: not valid CSV ({exc}); fix that row"
        ) from None
    if not lines:
        raise DataError(f"manifest {path} is empty; give a header path,label and one row per image")
    header = [c.strip().lower() for c in lines[0]]
    _check_columns(path, header, "header (line 1)")
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise DataError(
                f"manifest {path} line {number}: {len(cells)} fields, the header has "
                f"{len(header)}; quote values that contain commas"
            )
        record = dict(zip(header, cells, strict=True))
        rows.append(_row(number, record))
    return rows


def parse_jsonl(path: Path, text: str) -> list[ManifestRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"manifest {path} line {number}: not valid JSON ({exc.msg}); one object per line"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"manifest {path} line {number}: not a JSON object; write "
                '{"path": ..., "label": ...} per line'
            )
        _check_columns(path, sorted(record), f"line {number}")
        rows.append(_row(number, record))
    return rows


def _row(number: int, record: dict) -> ManifestRow:
    split = _cell(record, "split")
    group = _cell(record, "group")
    return ManifestRow(
        number, _cell(record, "path") or "", _cell(record, "label") or "", split, group or None
    )


def read_manifest_rows(path: Path) -> list[ManifestRow]:
    """The rows of a CSV or JSONL manifest, checked for form (not yet for files)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist or is not a file")
    text = _decode_text(path)
    rows = parse_jsonl(path, text) if path.suffix.lower() == ".jsonl" else parse_csv(path, text)
    if not rows:
        raise DataError(f"manifest {path} has no rows; add one row per image")
    return rows


def _split_of(path: Path, row: ManifestRow, has_split: bool) -> str:
    if not has_split:
        return "all"
    value = (row.split or "").lower()
    if value not in SPLIT_OF_VALUE:
        raise DataError(
            f"manifest {path} line {row.number}: split {row.split!r} is not train, val or test; "
            "fix the value (or leave the split column out)"
        )
    return SPLIT_OF_VALUE[value]


def _resolve_rows(
    path: Path, rows: list[ManifestRow], on_file: Callable[[], None] | None
) -> list[tuple[ManifestRow, Path, str]]:
    """(row, image path, split) for each row; one-line errors for rows that cannot be used."""
    base = path.parent
    has_split = any(r.split for r in rows)
    seen: dict[Path, int] = {}
    resolved = []
    for row in rows:
        if on_file is not None:
            on_file()
        where = f"manifest {path} line {row.number}"
        if not row.path:
            raise DataError(f"{where}: empty path; give the image file")
        if not row.label:
            raise DataError(f"{where}: empty label for {row.path}; give its class")
        split = _split_of(path, row, has_split)
        image = base / row.path
        key = Path(image.resolve())
        if key in seen:
            raise DataError(
                f"{where}: {row.path} is listed again (first on line {seen[key]}); "
                "keep one row per image"
            )
        seen[key] = row.number
        if not image.exists():
            raise DataError(f"{where}: {row.path} does not exist; fix the path or drop the row")
        if image.is_dir():
            raise DataError(f"{where}: {row.path} is a folder; list image files")
        resolved.append((row, image, split))
    return resolved


def manifest_entries(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, on_file: Callable[[], None] | None = None
) -> tuple[list[tuple[ManifestRow, Path, str]], list[Skipped], bool]:
    """(row, image path, split) of every usable row, the unreadable images passed over, and
    whether the manifest has a split column (else every split is "all").

    Rows that cannot be used at all (missing file, empty label, ...) raise DataError naming
    the row."""
    rows = read_manifest_rows(Path(path))
    resolved = _resolve_rows(Path(path), rows, on_file)
    skipped: list[Skipped] = []
    usable = []
    for row, image, split in resolved:
        reason = identify_image(image, max_pixels)
        if reason is None:
            usable.append((row, image, split))
        else:
            skipped.append(Skipped(str(image), reason))
    return usable, skipped, any(r.split for r in rows)


def read_manifest(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, on_file: Callable[[], None] | None = None
) -> ManifestScan:
    """A manifest as a FolderScan: classes sorted by name (as folders are), samples in folder
    order; raise DataError for a row that cannot be used."""
    path = Path(path)
    usable, skipped, has_split = manifest_entries(path, max_pixels, on_file)
    layout = "split" if has_split else "flat"
    pool = "train" if has_split else "all"
    if has_split and not any(split == "train" for _, _, split in usable):
        raise DataError(f"manifest {path} has no usable train rows; mark some rows split=train")
    classes = sorted({row.label for row, _, split in usable if split == pool})
    if not classes:
        raise DataError(f"manifest {path}: none of its images can be read; fix or replace them")
    if len(classes) < 2:
        raise DataError(
            f"manifest {path}: only one class ({classes[0]!r}); a classifier needs at least two"
        )
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    groups: dict[Path, str] = {}
    for row, image, split in sorted(usable, key=lambda r: (r[0].label, str(r[1]))):
        if row.label not in index:
            raise DataError(
                f"manifest {path} line {row.number}: label {row.label!r} ({split}) has no "
                "train rows; add train images of it or drop the row"
            )
        splits.setdefault(split, []).append(Sample(image, index[row.label]))
        if row.group:
            groups[image] = row.group
    warnings = []
    for split, samples in splits.items():
        missing = sorted(set(classes) - {classes[s.label] for s in samples})
        if split != pool and missing:
            warnings.append(f"{split} rows have no images of: {', '.join(missing)}")
    return ManifestScan(
        path.parent, layout, classes, splits, skipped, warnings, manifest=path, groups=groups
    )


def scan_data(
    data: Path, max_pixels: int = DEFAULT_MAX_PIXELS, on_file: Callable[[], None] | None = None
) -> FolderScan:
    """DATA as a scan: a manifest file (.csv, .jsonl) or an image folder."""
    if is_manifest(data):
        return read_manifest(data, max_pixels, on_file)
    return scan_image_folder(data, max_pixels, on_file)
