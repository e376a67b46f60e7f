"""Entries of one fortune file (Debian `fortunes`): texts separated by lines holding only `%`."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from expert_router.corpora.document import Document
from expert_router.errors import UserError

_SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)


def fortune_entries(path: Path) -> list[str]:
    """The stripped entries of fortune file `path`, in file order, empty ones dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [entry.strip() for entry in _SEPARATOR.split(text) if entry.strip()]


FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes", "/opt/homebrew/share/games/fortunes")
"""Where Debian, other Linux distributions and Homebrew install fortune files."""

DEMO_CATEGORIES = (
    "art", "computers", "drugs", "education", "food", "kids", "law", "linux", "literature", "love",
    "medicine", "pets", "politics", "science", "songs-poems", "sports", "startrek", "work",
)  # fmt: skip
"""Fortune categories of the demo corpus: the topical ones (not 'miscellaneous', 'zippy', ascii art)."""

MIN_DOCUMENT_CHARS = 20


def fortunes_dir() -> Path:
    """The folder of installed fortune files, or a UserError that says how to install them."""
    candidates = [os.environ["EXPERT_ROUTER_FORTUNES"]] if "EXPERT_ROUTER_FORTUNES" in os.environ else FORTUNE_DIRS
    for candidate in candidates:
        if (Path(candidate) / "computers").is_file():
            return Path(candidate)
    raise UserError(
        "the demo corpus is Debian's 'fortunes' package, which is not installed: "
        "run `sudo apt-get install fortunes` (or `make setup`), or set EXPERT_ROUTER_FORTUNES to its folder"
    )


def read_fortunes(categories: Iterable[str] = DEMO_CATEGORIES) -> Iterator[Document]:
    """Fortune cookies of the given categories, each labelled with its category.

    Categories are interleaved (one of each in turn) so that any prefix, such as `--limit 2000`,
    holds every topic.
    """
    root = fortunes_dir()
    per_category = []
    for category in categories:
        path = root / category
        if not path.is_file():
            raise UserError(f"fortune category {category!r} is missing from {root}")
        texts = fortune_entries(path)
        per_category.append([Document(t, category) for t in texts if len(t) >= MIN_DOCUMENT_CHARS])
    longest = max(len(docs) for docs in per_category)
    for i in range(longest):
        for docs in per_category:
            if i < len(docs):
                yield docs[i]
