"""Every command's --help as an 80-column terminal shows it: prose wrapped by the terminal (no
line broken where the docstring's source broke it), the examples indented as written, and
bracketed text shown, not eaten as Rich markup."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tlcli.cli import app, reflowed

runner = CliRunner()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]
WIDTH = 80


def description(command: str) -> list[str]:
    """The help text above the option boxes, at WIDTH columns, without the usage line."""
    result = runner.invoke(
        app, [command, "--help"], env={"COLUMNS": str(WIDTH)}, terminal_width=WIDTH
    )
    assert result.exit_code == 0, result.output
    text = result.output.split("╭─")[0]
    return [line.rstrip() for line in text.splitlines()][3:]  # blank, usage, blank


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prose_is_wrapped_by_the_terminal_not_by_the_source(command):
    lines = description(command)
    assert lines, "no description"
    for line, following in zip(lines, lines[1:], strict=False):
        assert len(line) <= WIDTH, line
        prose, next_prose = not line.startswith("   "), not following.startswith("   ")
        if prose and next_prose and line.strip() and following.strip():
            # A wrapped prose line fills the width: a short one with prose after it is a
            # line break of the docstring's source.
            room = WIDTH - len(line)
            assert room <= len(following.split()[0]) + 1, f"broken early: {line!r} / {following!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_keep_their_indent(command):
    lines = description(command)
    examples = [line for line in lines if re.match(r"^ +tlcli ", line)]
    assert examples, "every command's help has an example"
    assert all(line.startswith("   tlcli ") for line in examples), examples


def test_bracketed_text_is_shown_as_written():
    assert "pip install 'tlcli[onnx]'" in " ".join(description("export"))
    example = "[not bold]  x run[/not bold]\n[not bold]    --flag[/not bold]"
    assert reflowed("One.\n\nInstall 'x[y]'\nnow.\n\n  x run\n    --flag") == (
        f"One.\n\nInstall 'x\\[y]' now.\n\n{example}"
    )
