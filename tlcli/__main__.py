"""`python -m tlcli` and the `tlcli` script: the CLI, imported with Ctrl-C held back."""

from tlcli.interrupt import run_entry_point


def _load_main():
    from tlcli.cli import main

    return main


def run() -> None:
    run_entry_point(_load_main)


if __name__ == "__main__":
    run()
