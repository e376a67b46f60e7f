"""The offline demo corpus: eight topics, each drawn from Debian packages, balanced, labelled by topic.

Why a mix: fortune cookies alone are short and share one joking register, so their clusters are
mushy (NMI about 0.12 against their categories). Dictionaries give clean topical text — GCIDE tags
senses by field, FOLDOC and the Jargon File are all computing, the elements table is all chemistry —
and the fortunes keep a conversational register (and Star Trek). Short entries of one source are
packed into documents of at least `min_chars`, and each topic is capped at `per_topic` documents
taken round-robin over its sources in a seeded random order, so that no source or letter of the
alphabet dominates a topic. Topics are interleaved, so any prefix (`--limit`) holds all of them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from expert_router.corpora.dictd import dictd_path, read_dictd
from expert_router.corpora.fortunes import fortune_entries
from expert_router.corpora.gcide import read_gcide
from expert_router.corpora.glossaries import read_foldoc, read_jargon, wordnet_text
from expert_router.corpora.pydocs import python_docs_dir, read_python_docs
from expert_router.corpora.text import clip, squash

if TYPE_CHECKING:
    from expert_router.corpora.document import Document


@dataclass(frozen=True)
class Source:
    """One source of a topic: a name for the document's `source` field and a reader of its texts."""

    name: str
    read: Callable[[], Iterable[str]]


def gcide(tag: str) -> Source:
    def read() -> Iterator[str]:
        return (text for _, text in read_gcide(dictd_path("gcide", "dict-gcide"), [tag]))

    return Source(f"gcide ({tag})", read)


def fortunes(category: str) -> Source:
    def read() -> list[str]:
        from expert_router.corpora.fortunes import fortunes_dir

        return [squash(t) for t in fortune_entries(fortunes_dir() / category)]

    return Source(f"fortunes/{category}", read)


def wordnet(name: str, pattern: str) -> Source:
    """WordNet senses whose gloss names the topic in its first words (its genus): fills thin topics.

    Matching only the head of the gloss keeps "rock star" and "fungi growing on food" out.
    """
    wanted = re.compile(pattern, re.IGNORECASE)

    def read() -> Iterator[str]:
        for entry in read_dictd(dictd_path("wn", "dict-wn")):
            if not wanted.search(entry.text):  # cheap test before the clean-up
                continue
            text = wordnet_text(entry)
            head = " ".join(text.partition(":")[2].split()[:6])
            if wanted.search(head) and not _NOT_TOPICAL.search(head):
                yield text

    return Source(f"wordnet ({name})", read)


_NOT_TOPICAL = re.compile(
    r"\b(genus|family|tree|shrub|plant|herb|singer|actor|actress|musician|performer|"
    r"film|movie|rock|football|player|shaped)\b",
    re.IGNORECASE,
)


def foldoc() -> Iterator[str]:
    return (text for tag, text in read_foldoc(dictd_path("foldoc", "dict-foldoc")) if tag)


def jargon() -> Iterator[str]:
    return read_jargon(dictd_path("jargon", "dict-jargon"))


def python_docs() -> Iterator[str]:
    return (text for _, text in read_python_docs(python_docs_dir()))


FOOD_WORDS = (
    r"\b(dish|sauce|soup|stew|bread|cake|pastry|dessert|cheese|pasta|noodles?|salad|pie|"
    r"casserole|cookie|pudding|sausage|omelet|roll|biscuit|dumplings?)\b"
)
SKY_WORDS = r"\b(stars?|planets?|constellation|galaxy|comet|celestial|asteroid|nebula|meteors?|meteorites?)\b"

TOPICS: dict[str, tuple[Source, ...]] = {
    "computing": (Source("foldoc", foldoc), Source("jargon", jargon), fortunes("computers")),
    "python": (Source("python3-doc", python_docs),),
    "law": (gcide("Law"), fortunes("law")),
    "medicine": (gcide("Med."), gcide("Anat.")),
    "chemistry": (gcide("Chem."),),
    "astronomy": (gcide("Astron."), wordnet("astronomy", SKY_WORDS)),
    "food": (gcide("Cookery"), fortunes("food"), wordnet("food", FOOD_WORDS)),
    "startrek": (fortunes("startrek"),),
}
"""Topic -> its sources, from the Debian packages fortunes, dict-gcide, dict-foldoc, dict-jargon, dict-wn and
python3-doc. Left out on purpose: dict-elements (its cards share one template and form a cluster of
their own), the fortunes of medicine and linux (jokes share one register and pull topics together),
dict-devil and dict-vera (satire and acronyms: no single topic)."""

DEBIAN_PACKAGES = ("fortunes", "dict-gcide", "dict-foldoc", "dict-jargon", "dict-wn", "python3-doc")


def pack(texts: Iterable[str], min_chars: int, max_chars: int) -> Iterator[str]:
    """Consecutive texts joined (one per line) until each document holds at least `min_chars`."""
    parts: list[str] = []
    size = 0
    for text in texts:
        text = clip(text.strip(), max_chars)
        if not text:
            continue
        parts.append(text)
        size += len(text)
        if size >= min_chars:
            yield "\n".join(parts)
            parts, size = [], 0
    if parts and size >= min_chars // 2:
        yield "\n".join(parts)


def balanced_topic(
    sources: Sequence[Source], per_topic: int, min_chars: int, max_chars: int, seed: int
) -> list[tuple[str, str]]:
    """(source name, document) pairs of one topic: round-robin over its sources, each in seeded random order."""
    pools = []
    for source in sources:
        # Without repeats: a text twice in a source (the law fortunes have one) would tie exactly in
        # balanced k-means and could sit on both sides of the held-out split.
        documents = list(pack(dict.fromkeys(source.read()), min_chars, max_chars))
        random.Random(f"{seed}:{source.name}").shuffle(documents)
        pools.append((source.name, documents))
    chosen: list[tuple[str, str]] = []
    position = 0
    while len(chosen) < per_topic and any(position < len(docs) for _, docs in pools):
        for name, docs in pools:
            if position < len(docs) and len(chosen) < per_topic:
                chosen.append((name, docs[position]))
        position += 1
    return chosen


def read_topics(
    topics: dict[str, tuple[Source, ...]] | None = None,
    per_topic: int = 240,
    min_chars: int = 120,
    max_chars: int = 600,
    seed: int = 0,
) -> Iterator[Document]:
    """The demo corpus: documents labelled with their topic (and source), topics interleaved."""
    from expert_router.corpora.document import Document

    chosen = {
        topic: balanced_topic(sources, per_topic, min_chars, max_chars, seed)
        for topic, sources in (topics or TOPICS).items()
    }
    for i in range(max(len(docs) for docs in chosen.values())):
        for topic, docs in chosen.items():
            if i < len(docs):
                yield Document(docs[i][1], topic, docs[i][0])
