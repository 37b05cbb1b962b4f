"""Imports go one way (STYLE.md, "Layers"): a module imports only its own layer or lower ones.

Every import counts, at the top of a file or inside a function: a lazy import is still an
import, and the cycle it hides (train -> recommend -> train) is still a cycle. A module that is
in no layer fails too, so a new module is placed when it is written.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "tlcli"

# Bottom to top. An entry is a module or a package (its modules inherit the layer unless an
# entry for the module itself says otherwise).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Plumbing every layer may use: errors and exit codes, atomic writes and output guards,
    # stop signals, the progress protocol (the Reporter every layer reports through).
    (
        "errors/atomic/progress",
        (
            "tlcli",
            "tlcli.errors",
            "tlcli.atomic",
            "tlcli.interrupt",
            "tlcli.runtime",
            "tlcli.progress",
        ),
    ),
    # choices.py: every choice list, declared once (imports nothing of tlcli's).
    ("config", ("tlcli.choices", "tlcli.config")),
    ("data", ("tlcli.data",)),
    ("models", ("tlcli.models",)),
    ("strategy", ("tlcli.strategy",)),
    # The checkpoint payload format and its checks: training writes it, inference reads it.
    ("checkpoint", ("tlcli.checkpoint",)),
    # A model's outputs as numbers, figures and pages; below train because finetune draws
    # its curves and writes report.html, and validates with inference.predict_logits.
    # inference runs a checkpoint (build_model) or an export (onnx_model) on images.
    (
        "inference",
        ("tlcli.inference", "tlcli.onnx_model", "tlcli.metrics", "tlcli.plots", "tlcli.report"),
    ),
    # track.py is finetune's tracking hook (MLflow, TensorBoard).
    ("train", ("tlcli.train", "tlcli.track")),
    ("recommend", ("tlcli.recommend",)),
    ("evaluate/predict/export", ("tlcli.evaluate", "tlcli.predict", "tlcli.export")),
    ("tune", ("tlcli.tune",)),
    ("render", ("tlcli.render",)),
    ("cli", ("tlcli.cli", "tlcli.__main__")),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The rank of the longest listed prefix of `module`; None when nothing lists it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        rank = RANK.get(".".join(parts[:end]))
        if rank is not None and (end == len(parts) or end > 1):
            return rank
    return None


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported tlcli module or name) for every import in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from tlcli import config` imports the module tlcli.config, not just tlcli.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "tlcli"]


def imported_module(name: str, modules: set[str]) -> str:
    """The module `name` refers to: itself, or the module a name is imported from."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def layer_violations(root: Path = PACKAGE_ROOT) -> list[str]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    problems = []
    for path in files:
        module = module_name(path, root)
        own = layer_of(module)
        where = path.relative_to(root.parent)
        if own is None:
            problems.append(f"{where}: {module} is in no layer; add it to LAYERS in {__name__}")
            continue
        for line, name in imported_modules(path, module):
            imported = imported_module(name, modules)
            target = layer_of(imported)
            if target is not None and target > own:
                problems.append(
                    f"{where}:{line}: {module} (layer {LAYERS[own][0]}) imports {imported} "
                    f"(layer {LAYERS[target][0]}, higher)"
                )
    return problems


def test_imports_go_one_way() -> None:
    problems = layer_violations()
    assert not problems, "\n".join(problems)


def private_imports(root: Path = PACKAGE_ROOT) -> list[str]:
    """`from tlcli.x import _name`: another module's private helper (tune/plots.py took
    plots._finish) is a public function in the wrong place, or a copy waiting to drift."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if not (node.level or module.split(".")[0] == "tlcli"):
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        where = path.relative_to(root.parent)
                        problems.append(f"{where}:{node.lineno}: imports {module}.{alias.name}")
    return problems


def test_no_module_imports_another_ones_private_names() -> None:
    problems = private_imports()
    assert not problems, "\n".join(problems)


def test_every_layer_entry_exists() -> None:
    """A renamed or deleted module leaves no stale entry that would place nothing."""
    files = list(PACKAGE_ROOT.rglob("*.py"))
    modules = {module_name(path) for path in files}
    packages = {module_name(path) for path in files if path.name == "__init__.py"}
    stale = [name for name in RANK if name not in modules and name not in packages]
    assert not stale, stale


def test_a_lazy_import_of_a_higher_layer_fails(tmp_path: Path) -> None:
    """The walk sees an import inside a function, and names the file, line and layers."""
    package = tmp_path / "tlcli"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "config.py").write_text("def load():\n    from tlcli.data import scan\n")
    (package / "data" / "scan.py").write_text("from tlcli.config import load\n")
    (package / "stray.py").write_text("")
    problems = layer_violations(package)
    assert problems == [
        "tlcli/config.py:2: tlcli.config (layer config) imports tlcli.data.scan "
        "(layer data, higher)",
        f"tlcli/stray.py: tlcli.stray is in no layer; add it to LAYERS in {__name__}",
    ]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    package = tmp_path / "tlcli"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("from .. import models\n")
    (package / "models.py").write_text("")
    assert layer_violations(package) == [
        "tlcli/data/__init__.py:1: tlcli.data (layer data) imports tlcli.models "
        "(layer models, higher)"
    ]


# The back-edge train -> recommend, cut: --strategy auto is resolved by a chooser the caller
# gives (the CLI, lr-find and tune pass recommend.advise.auto_strategy).
TINY_RUN = [
    "--model", "test_resnet", "--no-pretrained", "--epochs", "1", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--set", "data.image_size=32",
]  # fmt: skip


def test_cli_finetune_gives_the_auto_chooser(image_folder, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import tlcli.train.run
    from tlcli.cli import app
    from tlcli.recommend.advise import auto_strategy

    given = {}

    def fake_finetune(data_dir, cfg, **kwargs):
        given.update(kwargs, strategy=cfg.strategy.name)
        raise SystemExit(0)  # the wiring is what is checked; the run itself is not needed

    monkeypatch.setattr(tlcli.train.run, "finetune", fake_finetune)
    args = ["finetune", str(image_folder()), *TINY_RUN, "--out", str(tmp_path / "run")]
    CliRunner().invoke(app, args, catch_exceptions=False)
    assert given["strategy"] == "auto" and given["choose_strategy"] is auto_strategy


def test_library_finetune_needs_a_chooser_for_auto(image_folder, tmp_path: Path) -> None:
    from tlcli.config import load_config
    from tlcli.train.run import finetune

    sets = ["model.name=test_resnet", "model.pretrained=false", "train.device=cpu"]
    cfg = load_config(None, [*sets, "data.image_size=32", "data.workers=1"])
    assert cfg.strategy.name == "auto"
    with pytest.raises(ValueError, match="choose_strategy"):
        finetune(image_folder(), cfg, out=tmp_path / "run")


IMPORT_MODULES = """
import importlib, sys
from PIL import Image
limit = Image.MAX_IMAGE_PIXELS
for name in sys.argv[1:]:
    importlib.import_module(name)
assert Image.MAX_IMAGE_PIXELS == limit, f"an import set PIL's limit to {Image.MAX_IMAGE_PIXELS}"
assert "matplotlib.pyplot" not in sys.modules, "an import loaded pyplot (a GUI backend)"
from tlcli.runtime import set_up_process
set_up_process()
assert Image.MAX_IMAGE_PIXELS is None
"""


def test_importing_tlcli_sets_no_process_state() -> None:
    """Process-wide settings are made by runtime.set_up_process, which the CLI calls, not by
    importing a module (a program embedding tlcli keeps its own PIL and matplotlib set-up)."""
    # Every module that imports PIL or matplotlib at its top, but those that load torch
    # (seconds to import; none of them sets process state either).
    sources = {module_name(path): path.read_text() for path in PACKAGE_ROOT.rglob("*.py")}
    users = sorted(
        name
        for name, text in sources.items()
        if re.search(r"^(from|import) (PIL|matplotlib|mpl_toolkits)\b", text, re.M)
        and not re.search(r"^(from|import) torch\b", text, re.M)
    )
    assert "tlcli.data.decode" in users and "tlcli.plots" in users
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT.parent)}
    command = [sys.executable, "-c", IMPORT_MODULES, *users]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
