"""One module per top-level CLI command: `add_parser(subparsers)` registers it, its handler runs it."""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in epilogs as written and shows every option's default."""
