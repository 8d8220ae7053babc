"""The `relssl` command: one module per sub-command and one error boundary.

User errors (`relssl.errors.RelsslError`: a bad config value, missing data, an unreadable
checkpoint) end with one line and exit status 2; anything else is a bug and keeps its traceback
(exit status 1). `RELSSL_DEBUG=1` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from relssl import __version__
from relssl.cli import benchmark, embed, eval, export, report, train
from relssl.cli.plugins import load_plugins
from relssl.errors import RelsslError, RelsslWarning

__all__ = ["build_parser", "main"]

BUG_HINT = ("relssl: internal error: this is a bug in relssl (or in a plugin it loaded), not in your input. "
            "Please report it with the traceback above and the command you ran.")


def build_parser() -> argparse.ArgumentParser:
    """The full `relssl` argument parser."""
    parser = argparse.ArgumentParser(
        prog="relssl",
        description="Self-supervised visual representation learning: Relational Reasoning "
        "(Patacchiola & Storkey, 2020) and friends. Pretrain a backbone on unlabelled images, "
        "then evaluate it with the papers' protocols.",
        epilog="Run `relssl COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"relssl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train.add_parser(sub)
    eval.add_parser(sub)
    benchmark.add_parser(sub)
    embed.add_parser(sub)
    export.add_parser(sub)
    report.add_parser(sub)
    return parser


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """relssl's own warnings as one line; others in Python's usual form."""
    if issubclass(category, RelsslWarning):
        return f"relssl: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 ok, 1 an internal error (with traceback), 2 a user error (one line), 130 interrupted."""
    warnings.formatwarning = _format_warning
    try:
        load_plugins()  # before the parser, so --help lists the plugins' parts
    except RelsslError as err:
        print(f"relssl: error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    name = " ".join(p for p in (args.command, getattr(args, "protocol", None)) if p)
    try:
        return int(args.run(args))
    except RelsslError as err:
        if os.environ.get("RELSSL_DEBUG"):
            raise
        print(f"relssl {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print(f"relssl {name}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the boundary: a bug keeps its traceback and says so
        traceback.print_exc()
        print(BUG_HINT, file=sys.stderr)
        return 1
