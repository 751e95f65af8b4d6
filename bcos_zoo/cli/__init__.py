"""The ``bcos-zoo`` command line: list, inspect, fetch and convert weights; predict, explain, evaluate
and measure localisation; train and fine-tune; and a demo that works offline.

One module per command group, each registering its subcommands: :mod:`.weights` (list, info,
download, convert), :mod:`.inference` (predict, explain, demo), :mod:`.measure` (evaluate,
localisation), :mod:`.train` (train, finetune), :mod:`.bcosify` (bcosify), :mod:`.export` (export),
:mod:`.serve` (the web demo). All of them use only bcos-zoo's public API.

Every command has ``--help``. It exits with 0 on success, 1 on an error (one line on stderr; the
traceback only with ``--debug``), 2 on a usage error and 130 when interrupted.

Example:
    $ bcos-zoo demo -o demo/
    $ bcos-zoo explain cat.jpg --model bcos_resnet50 --top-k 3 -o out/
    $ bcos-zoo predict *.png --weights run/model.safetensors --json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from bcos_zoo.version import __version__

from . import bcosify, export, inference, measure, serve, train, weights
from .common import Parser, UsageError

__all__ = ["main", "build_parser"]

log = logging.getLogger("bcos_zoo.cli")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    description = "B-cos networks from the command line: weights, predictions, explanations, evaluation, training."
    parser = Parser(prog="bcos-zoo", description=description, parents=[common])
    parser.add_argument("--version", action="version", version=f"bcos-zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], **kw)

    for group in (weights, inference, measure, train, bcosify, export, serve):
        group.add_commands(add)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__}: {text or repr(error)}"
    return text


def _setup_logging() -> None:
    logging.basicConfig(format="bcos-zoo: %(message)s", level=logging.WARNING)
    warnings.showwarning = lambda message, category, *_a, **_k: log.warning("%s", message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bcos-zoo`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    command = next((a for a in argv if not a.startswith("-")), None)
    _setup_logging()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("bcos-zoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # the command line reports every error in one line
        if debug:
            raise
        print(f"bcos-zoo {command or ''}: error: {_one_line(e)}".replace(" :", ":"), file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
