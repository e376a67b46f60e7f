"""One module per top-level CLI command: `add_parser(subparsers)` registers it, its handler runs it."""

import argparse

from expert_router.corpus import CorpusOptions


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in epilogs as written and shows every option's default."""


def add_corpus_options(parser: argparse.ArgumentParser) -> None:
    """How a CORPUS argument is read: one set of options wherever a command takes one."""
    parser.add_argument("--text-field", default="text", help="JSON/Parquet/dataset field holding the text")
    parser.add_argument("--label-field", default=None, help="field holding a topic label, to score clusters by")
    parser.add_argument("--split", default="train", help="Hugging Face dataset split")


def corpus_options(args: argparse.Namespace) -> CorpusOptions:
    return CorpusOptions(text_field=args.text_field, label_field=args.label_field, split=args.split)
