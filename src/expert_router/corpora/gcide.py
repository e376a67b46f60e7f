"""Subject-tagged senses of GCIDE (Debian `dict-gcide`, Webster's 1913 plus additions).

GCIDE marks senses that belong to a field with a tag such as `(Law)`, `(Chem.)` or `(Astron.)`: a
labelled topical corpus for free. An entry tagged in its head line belongs to the field as a whole;
otherwise only its tagged senses are taken. The tag itself is removed from the text, so a classifier
cannot score by reading the label. Pronunciations, etymologies, accent markup (`[=e]`) and source
notes (`[1913 Webster]`, `--Shak.`) are stripped; what is left reads "Word: definition".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from expert_router.corpora.dictd import read_dictd
from expert_router.corpora.text import squash

_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_MARKED_PARENS = re.compile(r"\([^()]*[\[*\"][^()]*\)")
_ACCENT = re.compile(r"\[[=~.\-\"'`^]?([a-zA-Z]{1,2})[\^'`\"~]?\]")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_CITATION = re.compile(r"--\s?[A-Z][^\n]*")
_SEGMENTS = re.compile(r"\n\s*\n|\n(?=\s+\d+\.\s)")
_HEADWORD = re.compile(r"^\s*([^\\\n,(\[]+)")
_PART_OF_SPEECH = re.compile(r"^[\s,;]*((?:n|v|a|adv|pl|p|pr|imp|vb|t|i|prep|conj|interj|p\. p)\.[\s,;]*)+")


def clean(text: str, tags: Iterable[str] = ()) -> str:
    """GCIDE markup removed from `text`, and each of `tags` (written `(Law)`) with it."""
    text = _PRONUNCIATION.sub(" ", text)
    text = _MARKED_PARENS.sub(" ", text)
    text = _ACCENT.sub(r"\1", text)
    text = _BRACKETS.sub(" ", text)
    text = _CITATION.sub(" ", text)
    for tag in tags:
        text = text.replace(f"({tag})", " ")
    text = text.replace("{", "").replace("}", "")
    return squash(text)


def tagged_senses(entry_text: str, tag: str) -> str | None:
    """'Word: definition' of the senses of one entry tagged `(tag)`, or None when none is."""
    marker = f"({tag})"
    if marker not in entry_text:
        return None
    segments = [s for s in _SEGMENTS.split(entry_text.strip()) if s.strip()]
    head = segments[0]
    headword_match = _HEADWORD.match(head)
    headword = squash(headword_match.group(1)) if headword_match else ""
    if marker in head:
        body = [head[headword_match.end() :] if headword_match else head, *segments[1:]]
    else:
        body = [s for s in segments[1:] if marker in s]
    definition = _PART_OF_SPEECH.sub("", clean("\n".join(body), [tag]))
    definition = re.sub(r"^\d+\.\s*", "", definition).strip()
    if not definition:
        return None
    return f"{headword}: {definition}" if headword else definition


def read_gcide(index: Path, tags: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(tag, text) for every entry of the dictionary at `index` that has senses tagged with one of `tags`."""
    wanted = tuple(tags)
    for entry in read_dictd(index):
        for tag in wanted:
            text = tagged_senses(entry.text, tag)
            if text:
                yield tag, text
                break
