"""What every command line of the project shares: argparse errors as one line.

    from sparse_gpt.cli import OneLineParser
    parser = OneLineParser(prog="python -m sparse_gpt.export", description=...)
"""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2, like every other error of the
    project's commands (argparse's own adds a multi-line usage block). Subcommand parsers made by
    `add_subparsers` are of the same class, so their errors are one line too."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def whole_number(least: int):
    """An argparse `type` for a whole number of at least `least`, with a one-line reason otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse
