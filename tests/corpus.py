"""Image folders generated at test time (no committed binaries): good tiny sets and a corpus of
the files people really keep in photo folders, each with the outcome tlcli must give it.

`make_bad_image_folder(root)` returns {relative path: outcome}, where outcome is
  "ok"       a usable image (possibly in an odd format) that must be trained on,
  "skipped"  reported by name in the skipped list (at scan, or at decode for SKIPPED_AT_DECODE),
  "ignored"  hidden files and folders: neither trained on nor reported.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Per-class base colours so tiny models can actually learn the classes.
CLASS_COLOURS = ((220, 60, 40), (40, 80, 220), (60, 200, 80), (200, 200, 40))
GOOD_SIDE = 24  # pixels; small images keep decoding and training instant
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF orientation 6: the stored image must be turned 90 degrees clockwise
BOMB_SIDE = 20_000  # declared in the header only: 400 M pixels > PIL's 178,956,970

# Classes of the bad corpus: plain, and one with unicode and a space in its name.
BAD_CORPUS_CLASSES = ("ants", "bees", "crème brûlée")
# Files in the bad corpus that load_rgb must handle, by what they test.
PNG_NAMED_JPG = "ants/really a png.jpg"
CMYK_JPEG = "ants/cmyk.jpg"
GRAY16_PNG = "ants/gray16.png"
RGBA_PNG = "ants/rgba.png"
PALETTE_PNG = "ants/palette_transparent.png"
ONE_BIT_PNG = "ants/one_bit.png"
LA_PNG = "ants/la.png"
EXIF_JPEG = "bees/exif_rotated.jpg"
ANIMATED_GIF = "bees/animated.gif"
UPPER_JPG = "bees/UPPER.JPG"
BRACKETS_JPG = "bees/IMG [1] (copy).jpg"  # [...] is Rich markup: must be printed as is
UNICODE_JPG = "crème brûlée/photo ünï 0.jpg"
PANORAMA_PNG = "ants/panorama 8x1.png"  # wide but a photo: resized from its centre region
STRIP_PNG = "bees/strip 1x20000.png"  # 161 bytes that resized to 256 px would be 2.8 GB
# Files that must be skipped, and the words their reason must contain.
TRUNCATED_JPEG = "bees/truncated [draft].jpg"
SKIP_REASONS = {
    "ants/empty.jpg": "empty",
    "ants/text.jpg": "not an image",
    "bees/page.jpg": "not an image",
    "bees/notes.txt": "not an image",
    "crème brûlée/bomb.png": "decompression bomb",
    TRUNCATED_JPEG: "truncated",
    STRIP_PNG: "extreme aspect ratio",
}
# The scan reads headers only; these pass it and fail when decoded.
SKIPPED_AT_DECODE = frozenset({TRUNCATED_JPEG})
GOOD_PER_CLASS = 8


def random_image(rng: np.random.Generator, label: int, side: int = GOOD_SIDE) -> Image.Image:
    """An RGB image: the class colour plus noise."""
    base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], dtype=np.float64)
    noise = rng.normal(0, 30, size=(side, side, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def make_image_folder(
    root: Path,
    counts: dict[str, int] | None = None,
    layout: str = "flat",
    val_counts: dict[str, int] | None = None,
    side: int = GOOD_SIDE,
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """root/<class>/*.ext (flat) or root/train|val/<class>/*.ext (split); returns root."""
    rng = np.random.default_rng(seed)
    counts = counts if counts is not None else {"a": 8, "b": 8}
    splits = {"": counts} if layout == "flat" else {"train": counts, "val": val_counts or counts}
    for split, by_class in splits.items():
        for label, (name, n) in enumerate(by_class.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                random_image(rng, label, side).save(folder / f"{name}_{i}{ext}")
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG that declares width x height (a decompression bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _two_halves(mode: str, left, right, size=(32, 16)) -> Image.Image:
    """Left half one colour, right half another (to check orientation and compositing)."""
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def make_bad_image_folder(root: Path) -> dict[str, str]:
    """Write the corpus under root (flat layout, 3 classes); returns {relative path: outcome}."""
    rng = np.random.default_rng(0)
    outcomes: dict[str, str] = {}

    def write(rel: str, data: bytes | Image.Image, outcome: str, **save) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Image.Image):
            data.save(path, **save)
        else:
            path.write_bytes(data)
        outcomes[rel] = outcome

    for label, name in enumerate(BAD_CORPUS_CLASSES):
        for i in range(GOOD_PER_CLASS):
            file_name = f"photo ünï {i}.jpg" if name == "crème brûlée" else f"{name}_{i}.jpg"
            write(f"{name}/{file_name}", jpeg_bytes(random_image(rng, label)), "ok")

    # Odd but valid formats: decoded to RGB and trained on.
    write(PNG_NAMED_JPG, random_image(rng, 0), "ok", format="PNG")
    write(CMYK_JPEG, Image.new("CMYK", (24, 24), (255, 0, 0, 0)), "ok", format="JPEG")
    gradient = np.tile(np.linspace(0, 65535, 64), (16, 1)).astype(np.uint16)
    write(GRAY16_PNG, Image.fromarray(gradient), "ok")
    write(RGBA_PNG, _two_halves("RGBA", (0, 0, 0, 0), (255, 0, 0, 255)), "ok")
    palette = _two_halves("P", 0, 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, 1 blue
    write(PALETTE_PNG, palette, "ok", transparency=0)
    write(ONE_BIT_PNG, _two_halves("1", 0, 1), "ok")
    write(LA_PNG, _two_halves("LA", (0, 0), (100, 255)), "ok")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    stored = _two_halves("RGB", (255, 0, 0), (0, 0, 255), size=(40, 20))  # red left, blue right
    write(EXIF_JPEG, jpeg_bytes(stored, exif=exif.tobytes()), "ok")
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    write(ANIMATED_GIF, gif.getvalue(), "ok")
    write(UPPER_JPG, jpeg_bytes(random_image(rng, 1)), "ok")
    write(BRACKETS_JPG, jpeg_bytes(random_image(rng, 1)), "ok")
    write(PANORAMA_PNG, random_image(rng, 0).resize((8 * GOOD_SIDE, GOOD_SIDE)), "ok")

    # Files that cannot be used: each reported by name.
    good_jpeg = jpeg_bytes(random_image(rng, 1, side=64))
    write(TRUNCATED_JPEG, good_jpeg[: len(good_jpeg) // 2], "skipped")
    write("ants/empty.jpg", b"", "skipped")
    write("ants/text.jpg", b"this is not a picture\n", "skipped")
    write("bees/page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "skipped")
    write("bees/notes.txt", b"shot on a sunny day\n", "skipped")
    write("crème brûlée/bomb.png", png_header_only(BOMB_SIDE, BOMB_SIDE), "skipped")
    write(STRIP_PNG, Image.new("L", (1, BOMB_SIDE), 128), "skipped")

    # Hidden files and folders (OS thumbnails, editor droppings): silently left out.
    write("ants/.hidden.jpg", jpeg_bytes(random_image(rng, 0)), "ignored")
    write("bees/.thumbnails/thumb.jpg", jpeg_bytes(random_image(rng, 1)), "ignored")
    write(".hidden class/x.jpg", jpeg_bytes(random_image(rng, 2)), "ignored")
    assert set(SKIP_REASONS) == {k for k, v in outcomes.items() if v == "skipped"}
    return outcomes


# Cases that live in the file system rather than in file contents (links, permissions,
# empty folders), added to a corpus by `add_filesystem_cases`.
LOOP_FILES = ("ants/loop_a.jpg", "ants/loop_b.jpg")  # each a symlink to the other
LOOP_CLASS = "all photos"  # a class folder that is a symlink to the data folder itself
FOLDER_LINK = "bees/more ants"  # a symlink to another class folder inside a class
LOCKED_FILE = "ants/locked.jpg"  # chmod 000
LOCKED_FOLDER = "bees/private"  # chmod 000, with an image inside
EMPTY_CLASS = "empty class"
FS_SKIP_REASONS = {
    LOOP_FILES[0]: "link loop",
    LOOP_FILES[1]: "link loop",
    LOOP_CLASS: "symbolic link loop",
    FOLDER_LINK: "link to a folder",
    LOCKED_FILE: "permission denied",
    LOCKED_FOLDER: "cannot list folder",
}


def add_filesystem_cases(root: Path) -> dict[str, str]:
    """Add links, locked files and an empty class to a corpus at root; {rel: outcome}."""
    rng = np.random.default_rng(1)
    (root / LOOP_FILES[0]).symlink_to(Path(LOOP_FILES[1]).name)
    (root / LOOP_FILES[1]).symlink_to(Path(LOOP_FILES[0]).name)
    (root / LOOP_CLASS).symlink_to(".", target_is_directory=True)
    (root / FOLDER_LINK).symlink_to("../ants", target_is_directory=True)
    (root / LOCKED_FILE).write_bytes(jpeg_bytes(random_image(rng, 0)))
    (root / LOCKED_FOLDER).mkdir()
    (root / LOCKED_FOLDER / "inside.jpg").write_bytes(jpeg_bytes(random_image(rng, 1)))
    (root / EMPTY_CLASS).mkdir()
    os.chmod(root / LOCKED_FILE, 0)
    os.chmod(root / LOCKED_FOLDER, 0)
    return {rel: "skipped" for rel in FS_SKIP_REASONS} | {EMPTY_CLASS: "left out"}


# Names that are data, not terminal input: tlcli prints them through errors.printable.
NON_UTF8_JPG = os.fsdecode(b"ants/caf\xe9.jpg")  # Latin-1 bytes, what Windows zips unpack to
ESCAPE_JPG = "bees/clear\x1b[2J\x1b[31mred.jpg"  # an ANSI sequence: clears the screen
NEWLINE_JPG = "bees/forged\nerror: all is well.jpg"  # truncated: its warning must stay one line
NAME_SKIP_REASONS = {NEWLINE_JPG: "truncated"}


def add_hostile_names(root: Path) -> dict[str, str]:
    """Add files with a non-UTF-8 name, an escape sequence and a newline; {rel: outcome}."""
    rng = np.random.default_rng(2)
    (root / NON_UTF8_JPG).write_bytes(jpeg_bytes(random_image(rng, 0)))
    (root / ESCAPE_JPG).write_bytes(jpeg_bytes(random_image(rng, 1)))
    good = jpeg_bytes(random_image(rng, 1, side=64))
    (root / NEWLINE_JPG).write_bytes(good[: len(good) // 2])
    return {NON_UTF8_JPG: "ok", ESCAPE_JPG: "ok", NEWLINE_JPG: "skipped"}


def unlock(root: Path) -> None:
    """Undo add_filesystem_cases' chmod 000 (so the folder can be deleted)."""
    for rel in (LOCKED_FILE, LOCKED_FOLDER):
        if (root / rel).exists():
            os.chmod(root / rel, 0o755)


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every entry under root (links not followed): kind, mode, mtime and content hash, so
    any change a command makes to a user's folder shows up."""
    digest: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                digest[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                digest[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                try:
                    content = hashlib.sha256(path.read_bytes()).hexdigest()
                except PermissionError:  # a locked file, when not root: its stat must do
                    content = "unreadable"
                digest[rel] = ("file", st.st_mode, st.st_mtime_ns, st.st_size, content)
    return digest


def _process_tree(pid: int) -> list[int]:
    """pid and every descendant alive now (from /proc/PID/task/TID/children)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except OSError:
                pass
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one live process in KiB, (0, 0) once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in lines if line.startswith(("VmRSS", "VmHWM")))
    return tuple(int(fields.get(key, "0 kB").split()[0]) for key in ("VmRSS", "VmHWM"))


def run_measured(args: list[str], timeout: float, **popen) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of one subprocess and its workers.

    The peak is read from /proc every 20 ms until the child exits: the largest of the sum of
    RSS over the child and its descendants, and of any one process's own VmHWM. Neither
    RUSAGE_CHILDREN nor the child's wait4 ru_maxrss will do: at exec Linux carries the
    high-water mark of the memory the child was (v)forked from into ru_maxrss, so a small child
    of a big test process reports the test process's peak."""
    import subprocess
    import tempfile
    import threading

    peak_kib = [0]

    def watch(pid: int, done: threading.Event) -> None:
        while not done.wait(0.02):
            readings = [_memory_kib(each) for each in _process_tree(pid)]
            together = sum(rss for rss, _ in readings)
            peak_kib[0] = max(peak_kib[0], together, *(hwm for _, hwm in readings))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, **popen)
        done = threading.Event()
        watcher = threading.Thread(target=watch, args=(proc.pid, done), daemon=True)
        watcher.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
            done.set()
            watcher.join()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), peak_kib[0] * 1024


# --- crafted checkpoints: every field of a best.pt, wrong (issue 12, 2.8) -------------------
HUGE_CLASS_COUNT = 200_001  # above tlcli's limit; the old error line listed every one


def _edit_checkpoint(ckpt: dict, case: str) -> dict:
    """A copy of a real checkpoint dict with one hostile change."""
    import torch

    ckpt = {**ckpt, "model": dict(ckpt["model"]), "data": dict(ckpt["data"])}
    state = dict(ckpt["state_dict"])
    first = next(iter(state))
    edits = {
        "architecture-hf-hub": lambda: ckpt["model"].update(architecture="hf-hub:attacker/x"),
        "architecture-local-dir": lambda: ckpt["model"].update(architecture="local-dir:/tmp"),
        "architecture-unknown": lambda: ckpt["model"].update(architecture="no_such_net_v9"),
        "architecture-not-a-string": lambda: ckpt["model"].update(architecture=["resnet18"]),
        "kwargs-checkpoint-path": lambda: ckpt["model"].update(
            kwargs={**ckpt["model"]["kwargs"], "checkpoint_path": "/etc/passwd"}
        ),
        "kwargs-wrong-type": lambda: ckpt["model"].update(
            kwargs={**ckpt["model"]["kwargs"], "drop_rate": "lots"}
        ),
        "kwargs-not-a-dict": lambda: ckpt["model"].update(kwargs=["num_classes", 2]),
        "classes-a-string": lambda: ckpt.update(classes="redblue"),
        "classes-huge": lambda: ckpt.update(classes=[f"c{i}" for i in range(HUGE_CLASS_COUNT)]),
        "classes-not-strings": lambda: ckpt.update(classes=[1, 2]),
        "input-size-a-string": lambda: ckpt["data"].update(input_size="big"),
        "crop-pct-tiny": lambda: ckpt["data"].update(crop_pct=1e-6),
        "mean-nan": lambda: ckpt["data"].update(mean=[float("nan")] * 3),
        "format-version-a-string": lambda: ckpt.update(format_version="one"),
        "missing-state-dict": lambda: ckpt.pop("state_dict"),
        "missing-model": lambda: ckpt.pop("model"),
        "missing-data": lambda: ckpt.pop("data"),
        "state-wrong-shape": lambda: state.update({first: torch.zeros(3, 1, 1, 1)}),
        "state-not-tensors": lambda: ckpt.update(state_dict={k: [0.0] for k in state}),
        "state-a-list": lambda: ckpt.update(state_dict=list(state.values())),
        "state-nan-weights": lambda: state.update(
            {first: torch.full_like(state[first], float("nan"))}
        ),
        "state-extra-tensor": lambda: state.update({"evil.weight": torch.zeros(1)}),
        "metrics-wrong-type": lambda: ckpt.update(metrics={"best_val_acc": "high"}),
        "best-weights-unknown": lambda: ckpt.update(best_weights="mine"),
    }
    edits[case]()
    if case in ("state-wrong-shape", "state-nan-weights", "state-extra-tensor"):
        ckpt["state_dict"] = state
    return ckpt


CRAFTED_CHECKPOINT_CASES = (
    "architecture-hf-hub",
    "architecture-local-dir",
    "architecture-unknown",
    "architecture-not-a-string",
    "kwargs-checkpoint-path",
    "kwargs-wrong-type",
    "kwargs-not-a-dict",
    "classes-a-string",
    "classes-huge",
    "classes-not-strings",
    "input-size-a-string",
    "crop-pct-tiny",
    "mean-nan",
    "format-version-a-string",
    "missing-state-dict",
    "missing-model",
    "missing-data",
    "state-wrong-shape",
    "state-not-tensors",
    "state-a-list",
    "state-nan-weights",
    "state-extra-tensor",
    "metrics-wrong-type",
    "best-weights-unknown",
)


def make_crafted_checkpoint(good: Path, case: str, out: Path) -> Path:
    """`out`: the checkpoint `good` with the hostile change `case` (CRAFTED_CHECKPOINT_CASES),
    or, for the file-level cases, a zip whose only member inflates to far more than its size."""
    import torch

    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    torch.save(_edit_checkpoint(ckpt, case), out)
    return out


# --- corrupt local-dir: model folders (issue 12, 2.8): each must be exit 4, one line --------
LOCAL_DIR_CASES = (
    "config-not-json",
    "config-a-list",
    "config-no-architecture",
    "config-unknown-architecture",
    "config-hf-hub-architecture",
    "config-wrong-architecture",
    "weights-truncated",
    "weights-not-safetensors",
    "weights-empty",
    "config-missing",
    "weights-missing",
)


def make_local_dir_model(root: Path, case: str | None = None) -> Path:
    """A local-dir: folder (timm's config.json + model.safetensors) of the tiny test_resnet,
    with the corruption `case` (LOCAL_DIR_CASES), or intact for None."""
    import json

    import timm
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    model = timm.create_model("test_resnet", pretrained=False)
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "architecture"}
    config = {
        "architecture": "test_resnet",
        "num_classes": model.num_classes,
        "pretrained_cfg": json.loads(json.dumps(pretrained_cfg, default=str)),
    }
    weights = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    texts = {
        "config-not-json": "{architecture: test_resnet",
        "config-a-list": "[1, 2]",
        "config-no-architecture": json.dumps({"num_classes": 10}),
        "config-unknown-architecture": json.dumps({**config, "architecture": "no_such_net_v9"}),
        "config-hf-hub-architecture": json.dumps({**config, "architecture": "hf-hub:attacker/x"}),
        "config-wrong-architecture": json.dumps({**config, "architecture": "test_efficientnet"}),
    }
    (root / "config.json").write_text(texts.get(case, json.dumps(config)))
    if case == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "weights-not-safetensors":
        weights.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif case == "weights-empty":
        weights.write_bytes(b"")
    elif case == "config-missing":
        (root / "config.json").unlink()
    elif case == "weights-missing":
        weights.unlink()
    return root


def make_checkpoint(path: Path, classes: tuple[str, ...] = ("blue", "red")) -> Path:
    """A tlcli checkpoint of a random-init test_resnet, written as finetune writes one, in a
    fraction of the time of a finetune run."""
    import timm

    from tlcli.checkpoint import save_checkpoint

    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(classes))
    save_checkpoint(
        path,
        {
            "model": {
                "architecture": "test_resnet",
                "kwargs": {"num_classes": len(classes), "drop_rate": 0.0},
                "source": "test_resnet",
            },
            "classes": list(classes),
            "data": {
                "input_size": 64,
                "interpolation": "bilinear",
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "crop_pct": 0.95,
            },
            "metrics": {"epoch": 1, "best_epoch": 1, "best_val_acc": 0.5},
            "best_weights": "raw",
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "ema_state_dict": None,
        },
    )
    return path


# --- bad manifests: each is one line, exit 3, naming the row --------------------------------

MANIFEST_HEADER = "path,label,split\n"
# case -> (manifest text, or bytes for encodings; words of the error line). Each is written
# next to a folder a/a_0.png, a/a_1.png, b/b_0.png, b/b_1.png (make_manifest_images).
BAD_MANIFEST_CASES: dict[str, tuple[str | bytes, list[str]]] = {
    "manifest-missing-file": (
        "path,label\na/a_0.png,a\nb/gone.png,b\n",
        ["line 3", "b/gone.png does not exist"],
    ),
    "manifest-empty-label": ("path,label\na/a_0.png,a\nb/b_0.png,\n", ["line 3", "empty label"]),
    "manifest-unknown-split": (
        MANIFEST_HEADER + "a/a_0.png,a,train\nb/b_0.png,b,holdout\n",
        ["line 3", "'holdout' is not train, val or test"],
    ),
    "manifest-missing-column": ("path,class\na/a_0.png,a\n", ["no label column"]),
    "manifest-duplicate-path": (
        "path,label\na/a_0.png,a\nb/b_0.png,b\n./a/a_0.png,b\n",
        ["line 4", "listed again (first on line 2)"],
    ),
    "manifest-bad-encoding": (
        "path,label\na/a_0.png,a\nb/b_0.png,caf\xe9\n".encode("latin-1"),
        ["line 3", "not UTF-8"],
    ),
    "manifest-empty": ("", ["is empty"]),
    "manifest-header-only": ("path,label\n", ["has no rows"]),
    "manifest-wrong-field-count": (
        "path,label\na/a_0.png,a,extra\n",
        ["line 2", "3 fields, the header has 2"],
    ),
    "manifest-jsonl-not-json": (
        '{"path": "a/a_0.png", "label": "a"}\n{"path": "b/b_0.png", label: b}\n',
        ["line 2", "not valid JSON"],
    ),
    "manifest-jsonl-not-an-object": ('["a/a_0.png", "a"]\n', ["line 1", "not a JSON object"]),
    "manifest-path-is-a-folder": ("path,label\na,a\nb/b_0.png,b\n", ["line 2", "is a folder"]),
    "manifest-one-class": ("path,label\na/a_0.png,a\na/a_1.png,a\n", ["only one class"]),
    "manifest-val-label-not-in-train": (
        MANIFEST_HEADER + "a/a_0.png,a,train\nb/b_0.png,b,train\na/a_1.png,c,val\n",
        ["line 4", "'c' (val) has no train rows"],
    ),
}


def make_manifest_images(root: Path) -> Path:
    """Two classes of two images each, for the bad manifests to point at."""
    return make_image_folder(root, {"a": 2, "b": 2})


def write_bad_manifest(root: Path, case: str) -> Path:
    """The manifest of a BAD_MANIFEST_CASES case, in root (next to make_manifest_images)."""
    content, _ = BAD_MANIFEST_CASES[case]
    path = root / ("manifest.jsonl" if "jsonl" in case else "manifest.csv")
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# Run dirs, caches and files that change: each case needs two processes, a stopped run or a
# read-only cache dir, so each has a test of its own: case -> (exit code, "file::test").
# docs/reliability.md has a row for each (test_corpus.py checks both).
RUN_DIR_CASES = {
    "two-runs-one-out": (
        6,
        "test_run_dirs.py::test_two_runs_with_one_out_one_trains_the_other_is_refused",
    ),
    "two-default-runs-one-second": (
        0,
        "test_run_dirs.py::test_two_default_named_runs_in_one_second_get_two_run_dirs",
    ),
    "claim-of-a-killed-run": (
        0,
        "test_run_dirs.py::test_a_claim_left_by_a_killed_run_is_no_obstacle",
    ),
    "resume-a-run-in-training": (
        6,
        "test_run_dirs.py::test_resume_of_a_run_another_process_trains_is_refused",
    ),
    "output-inside-data-folder": (
        6,
        "test_run_dirs.py::test_an_output_inside_the_data_folder_is_refused",
    ),
    "finetune-dot-inside-data-folder": (
        6,
        "test_run_dirs.py::test_finetune_dot_from_inside_the_data_folder_is_refused",
    ),
    "resume-with-other-options": (
        2,
        "test_run_dirs.py::test_resume_refuses_every_option_but_epochs_by_name",
    ),
    "resume-finished-epoch-run": (
        6,
        "test_run_dirs.py::test_a_finished_run_has_nothing_to_resume_epoch_run_and_head_only_alike",
    ),
    "resume-finished-head-only": (
        6,
        "test_run_dirs.py::test_a_finished_run_has_nothing_to_resume_epoch_run_and_head_only_alike",
    ),
    "resume-fewer-epochs": (
        2,
        "test_run_dirs.py::test_resume_with_fewer_epochs_than_done_is_refused",
    ),
    "resume-extend-epochs": (
        0,
        "test_run_dirs.py::test_resume_with_epochs_extends_a_finished_run_on_the_new_schedule",
    ),
    "read-only-cache-dir": (
        0,
        "test_caches.py::test_a_read_only_cache_dir_falls_back_to_ram_with_one_warning",
    ),
    "image-deleted-after-scan": (
        3,
        "test_caches.py::test_an_image_deleted_after_the_scan_is_one_line",
    ),
    "image-deleted-before-resume": (
        3,
        "test_run_dirs.py::test_an_image_deleted_before_resume_is_one_line",
    ),
    "contents-swapped-mtime-kept": (
        0,
        "test_caches.py::test_evaluate_scores_swapped_contents_not_the_stale_cache",
    ),
}
