"""The `expert-router` command. Thin: parses arguments and hands them to one command module each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.text import Text

from expert_router import __version__
from expert_router.commands import (
    classifier,
    demo,
    emulate,
    evaluate,
    experiment,
    experts,
    extproc,
    load,
    nginx_router,
    report,
    serve,
    simulate,
    synthetic,
)
from expert_router.errors import UserError
from expert_router.progress import console

COMMANDS = (
    demo,
    classifier,
    experts,
    evaluate,
    serve,
    extproc,
    nginx_router,
    synthetic,
    emulate,
    simulate,
    load,
    experiment,
    report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expert-router",
        description="Serve several specialised LLMs behind one endpoint, route each prompt to its expert, "
        "and measure the system under load.",
        epilog="Run `expert-router COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"expert-router {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except BrokenPipeError:  # the output's reader went away (`| head`): nothing more to say, and nowhere to say it
        sys.stderr.close()
        return 141
    except OSError as exc:  # a path the user gave that cannot be made, read or written, a port in use
        where = f" ({exc.filename})" if exc.filename else ""
        console.print(Text.assemble(("error: ", "bold red"), f"{exc.strerror or exc}{where}"))
        return 2


if __name__ == "__main__":
    sys.exit(main())
