"""A contact sheet of flagged images: each tile with its given and suggested label, so a person
can scan fifty of them in seconds and decide which are really wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TILE = 176  # px, thumbnail side
COLUMNS = 8
TEXT_LINES = 3
LINE_HEIGHT = 17
FONT_SIZE = 13
PAD = 6
# Frame colours by kind of flag: a person reads red first.
KIND_COLOURS = {"label": (200, 30, 30), "ambiguous": (220, 140, 0), "outlier": (40, 90, 200)}


@dataclass(frozen=True)
class Tile:
    path: Path
    kind: str  # label | ambiguous | outlier
    lines: tuple[str, ...]  # up to TEXT_LINES captions


def _thumbnail(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.draft("RGB", (TILE * 2, TILE * 2))
            rgb = img.convert("RGB")
    except Exception:  # flagged files are readable (they were decoded); a race is shown grey
        return Image.new("RGB", (TILE, TILE), (128, 128, 128))
    rgb.thumbnail((TILE, TILE), Image.BICUBIC)
    canvas = Image.new("RGB", (TILE, TILE), (255, 255, 255))
    canvas.paste(rgb, ((TILE - rgb.width) // 2, (TILE - rgb.height) // 2))
    return canvas


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def draw_contact_sheet(tiles: list[Tile], path: Path, title: str) -> Path:
    """Write the tiles as one PNG, row by row, COLUMNS wide."""
    font = ImageFont.load_default(size=FONT_SIZE)
    cell_w, cell_h = TILE + 2 * PAD, TILE + 2 * PAD + TEXT_LINES * LINE_HEIGHT
    rows = max(1, -(-len(tiles) // COLUMNS))
    header = LINE_HEIGHT * 2
    sheet = Image.new("RGB", (COLUMNS * cell_w, header + rows * cell_h), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), _fit(draw, title, font, sheet.width - 2 * PAD), fill=(0, 0, 0), font=font)
    for k, tile in enumerate(tiles):
        x, y = (k % COLUMNS) * cell_w, header + (k // COLUMNS) * cell_h
        colour = KIND_COLOURS.get(tile.kind, (0, 0, 0))
        draw.rectangle([x + 2, y + 2, x + cell_w - 3, y + cell_h - 3], outline=colour, width=3)
        sheet.paste(_thumbnail(tile.path), (x + PAD, y + PAD))
        for n, line in enumerate(tile.lines[:TEXT_LINES]):
            draw.text(
                (x + PAD, y + PAD + TILE + 2 + n * LINE_HEIGHT),
                _fit(draw, line, font, TILE),
                fill=colour if n == 0 else (20, 20, 20),
                font=font,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
