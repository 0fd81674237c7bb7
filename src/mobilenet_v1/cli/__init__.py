"""``mobilenet-v1`` command line: each subcommand parses, calls one library function, prints.

Library code raises ``ValueError``/``OSError`` with a message naming the input and the problem; here that becomes
one line on stderr and exit code 2. Anything else becomes one line and exit code 1 (``--debug`` for the traceback),
Ctrl-C one line and exit code 130: never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings

# subcommand -> its help; each is the module ``<name>_cmd`` here, exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "summary": "Per-layer table of Mult-Adds and parameters",
    "paper": "The paper's cost tables beside ours, with verdicts",
    "train": "Train on Fashion-MNIST or an ImageFolder tree",
    "eval": "Evaluate a trained model",
    "predict": "Top-k classes for images",
    "convert": "Convert TensorFlow / Keras / timm weights",
    "export": "Export to ONNX or TorchScript",
    "bench": "Benchmark inference backends",
}


class CliError(Exception):
    """A user-facing failure whose message is already one clear line."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mobilenet-v1", description="MobileNet-V1 (Howard et al. 2017) in PyTorch")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, helptext in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{name}_cmd")
        p = sub.add_parser(name, help=helptext, description=helptext)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def one_line(error: BaseException) -> str:
    """An exception's message on one line (library messages may wrap; tracebacks never reach the user)."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        where = f"{error.filename}: " if error.filename else ""
        why = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "over the file size limit",
               errno.EDQUOT: "over the disk quota"}[error.errno]  # fmt: skip
        return f"{where}{why} (nothing was written)"
    return text or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mobilenet-v1: warning: {one_line(Warning(message))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand: its result on stdout, and on failure one line on stderr and a non-zero exit:
    2 for a bad input or option (a message naming it), 1 for anything unexpected (``--debug`` shows the
    traceback), 130 for Ctrl-C at any point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "mobilenet-v1"
    with warnings.catch_warnings():
        # Libraries' deprecation notices are not the user's to act on; our own warnings print as one line each.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.showwarning = _show_warning
        try:
            args = build_parser().parse_args(argv)
            command = f"mobilenet-v1 {args.command}"
            return args._run(args)
        except KeyboardInterrupt:
            print(f"{command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # stdout closed early (`| head`): nothing left to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
            return 141
        except (ValueError, OSError, CliError) as e:
            print(f"{command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            if "--debug" in argv:
                raise
            print(f"{command}: error: {type(e).__name__}: {one_line(e)} (run with --debug for the traceback)",
                  file=sys.stderr)  # fmt: skip
            return 1
