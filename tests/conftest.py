"""Shared fixtures: a private cache dir for every test, the ../shared folder, image folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from corpus import make_bad_image_folder, make_image_folder

from tlcli.runtime import set_up_process

set_up_process()  # as the CLI does before every command: tests call the library directly

# Real data and weights live next to the repository (../shared); integration tests use them.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def tmp_cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """Decode/feature caches go to a fresh temp dir, never to ~/.cache/tlcli."""
    cache = tmp_path_factory.mktemp("tlcli-cache")
    monkeypatch.setenv("TLCLI_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture
def image_folder(tmp_path) -> Callable[..., Path]:
    """Factory: image_folder(counts={'a': 8, 'b': 8}, layout='flat'|'split', ...) -> root."""
    counter = iter(range(1_000_000))

    def make(name: str | None = None, **kwargs) -> Path:
        root = tmp_path / (name or f"images{next(counter)}")
        return make_image_folder(root, **kwargs)

    return make


@pytest.fixture
def bad_corpus(tmp_path) -> tuple[Path, dict[str, str]]:
    """(root, {relative path: 'ok' | 'skipped' | 'ignored'}) of the bad-input corpus."""
    root = tmp_path / "bad corpus"
    return root, make_bad_image_folder(root)
