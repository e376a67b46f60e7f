"""Readers of offline text sources (Debian packages) and the named corpora built from them.

`read_named(name)` serves the names `read_corpus` accepts besides files and `hf:`: `demo` (eight
balanced topics from dictionaries, the Python manual and fortunes; see `topics`) and `fortunes` (the
older fortunes-only corpus, 18 categories). One module per source format: `dictd` (the dictionary
file format), `gcide`, `glossaries` (FOLDOC, Jargon File, WordNet, elements), `fortunes`, `pydocs`; `cache`
keeps a built corpus for the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expert_router.corpora.document import Document


def _demo() -> Iterator[Document]:
    from expert_router.corpora.topics import read_topics

    return read_topics()


def _demo_inputs() -> list[Path]:
    from expert_router.corpora.dictd import dictd_path
    from expert_router.corpora.fortunes import fortunes_dir
    from expert_router.corpora.pydocs import python_docs_dir

    dictionaries = [("gcide", "dict-gcide"), ("wn", "dict-wn"), ("foldoc", "dict-foldoc"), ("jargon", "dict-jargon")]
    return sorted({dictd_path(*d).parent for d in dictionaries}) + [fortunes_dir(), python_docs_dir()]


def _fortunes() -> Iterator[Document]:
    from expert_router.corpora.fortunes import read_fortunes

    return read_fortunes()


def _fortunes_inputs() -> list[Path]:
    from expert_router.corpora.fortunes import fortunes_dir

    return [fortunes_dir()]


NAMED_CORPORA: dict[str, tuple[Callable[[], Iterator[Document]], Callable[[], list[Path]]]] = {
    "demo": (_demo, _demo_inputs),
    "fortunes": (_fortunes, _fortunes_inputs),
}
"""Corpus names -> (reader, the data folders it reads). `demo` is what `expert-router demo` and the
examples use."""


def read_named(name: str) -> Iterator[Document]:
    """The documents of named corpus `name` (a key of NAMED_CORPORA), from the cache when its data is
    unchanged since it was built (`cache`)."""
    from expert_router.corpora.cache import through_cache

    read, inputs = NAMED_CORPORA[name]
    return through_cache(name, read, inputs)
