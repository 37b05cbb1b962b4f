"""How the library reports progress: a small callback protocol the CLI renders with Rich."""

from __future__ import annotations

from typing import Any, Protocol


class Reporter(Protocol):
    def start(self, task: str, total: int | None, description: str = "") -> None: ...

    def advance(self, task: str, amount: int = 1) -> None: ...

    def finish(self, task: str) -> None: ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def note(self, message: str, level: str = "info") -> None: ...


class NullReporter:
    """Reports nothing: for library use and tests."""

    def start(self, task: str, total: int | None, description: str = "") -> None:
        pass

    def advance(self, task: str, amount: int = 1) -> None:
        pass

    def finish(self, task: str) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def note(self, message: str, level: str = "info") -> None:
        pass
