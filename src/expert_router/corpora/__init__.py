"""Readers of offline text sources (Debian packages) and the named corpora built from them.

`read_named(name)` serves the names `read_corpus` accepts besides files and `hf:`: `demo` (eight
balanced topics from dictionaries, the Python manual and fortunes; see `topics`) and `fortunes` (the
older fortunes-only corpus, 18 categories). One module per source format: `dictd` (the dictionary
file format), `gcide`, `glossaries` (FOLDOC, Jargon File, WordNet, elements), `fortunes`, `pydocs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expert_router.corpora.document import Document


def _demo() -> Iterator[Document]:
    from expert_router.corpora.topics import read_topics

    return read_topics()


def _fortunes() -> Iterator[Document]:
    from expert_router.corpora.fortunes import read_fortunes

    return read_fortunes()


NAMED_CORPORA: dict[str, Callable[[], Iterator[Document]]] = {"demo": _demo, "fortunes": _fortunes}
"""Corpus names -> readers. `demo` is what `expert-router demo` and the examples use."""


def read_named(name: str) -> Iterator[Document]:
    """The documents of named corpus `name` (a key of NAMED_CORPORA)."""
    return NAMED_CORPORA[name]()


__all__ = ["NAMED_CORPORA", "read_named"]
