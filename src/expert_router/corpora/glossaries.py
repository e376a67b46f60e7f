"""Cleaning the entries of the dictd glossaries: FOLDOC, the Jargon File, WordNet, the elements table.

Each glossary has its own markup: FOLDOC opens a definition with a subject tag (`<programming>`) and
ends it with a date; the Jargon File puts a pronunciation line and usage tags (`[techspeak]`) first;
WordNet numbers its senses and lists synonyms (`[syn: ...]`); all write cross-references in braces.
What is kept reads "Word: definition".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from expert_router.corpora.dictd import Entry, read_dictd
from expert_router.corpora.text import squash

_BRACED_URL = re.compile(r"\{[^{}]*\(\w+://[^{}]*\)\s*\}")
_URL = re.compile(r"\(?\w+://\S+")
_FOLDOC_TAG = re.compile(r"<[^<>\n]{1,40}>")
_DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)")
_JARGON_TAG = re.compile(r"\[[a-zA-Z][\w ,.-]{0,30}\]")
_JARGON_PRONUNCIATION = re.compile(r"^\s*/[^/\n]*/,?")
_WN_SYNONYMS = re.compile(r"\[(?:syn|ant|also|see)\b[^\]]*\]", re.DOTALL)
_WN_PART_OF_SPEECH = re.compile(r"\b(?:n|v|adj|adv)\s+(?=\d+:)")
_WN_SENSE_NUMBER = re.compile(r"\b\d+:\s")


def _body(entry: Entry) -> tuple[str, str]:
    """(headword, the entry's text after its unindented headword lines)."""
    lines = entry.text.strip("\n").splitlines()
    head = [line for line in lines if line and not line[0].isspace()]
    start = next((i for i, line in enumerate(lines) if line and line[0].isspace()), len(lines))
    headword = head[0].strip() if head else entry.headwords[0]
    return headword, "\n".join(lines[start:])


def _unbrace(text: str) -> str:
    text = _BRACED_URL.sub(" ", text)
    text = _URL.sub(" ", text)
    return text.replace("{", "").replace("}", "")


def foldoc_text(entry: Entry) -> tuple[str, str]:
    """(first subject tag or '', 'Word: definition') of a FOLDOC entry."""
    headword, body = _body(entry)
    tag = _FOLDOC_TAG.search(body)
    body = _DATE.sub(" ", _FOLDOC_TAG.sub(" ", body))
    return (tag.group(0)[1:-1] if tag else ""), f"{headword}: {squash(_unbrace(body))}"


def jargon_text(entry: Entry) -> str:
    """'Word: definition' of a Jargon File entry."""
    headword, body = _body(entry)
    body = _JARGON_PRONUNCIATION.sub(" ", body)
    body = re.sub(r"^\s*(?:n|v|adj|adv|vt|vi|interj)\.(?:,\s*(?:n|v|adj|adv|vt|vi)\.)*", " ", body.lstrip())
    return f"{headword}: {squash(_JARGON_TAG.sub(' ', _unbrace(body)))}"


def wordnet_text(entry: Entry) -> str:
    """'word: gloss; gloss' of a WordNet entry (senses joined, synonym lists dropped)."""
    headword, body = _body(entry)
    body = _WN_SYNONYMS.sub(" ", body)
    body = _WN_SENSE_NUMBER.sub("; ", _WN_PART_OF_SPEECH.sub(" ", body))
    return f"{headword}: {squash(_unbrace(body)).lstrip('; ')}"


def elements_text(entry: Entry) -> str:
    """'element: description' of an element's card; the symbol, number and weight lines are dropped
    (a template repeated on every card would make the cards a cluster of their own)."""
    lines = entry.text.strip().splitlines()
    prose = [line for line in lines[1:] if not re.match(r"\s*(Symbol|Atomic number|Atomic weight):", line)]
    return f"{lines[0].strip()}: {squash(' '.join(prose))}" if lines else ""


def read_foldoc(index: Path) -> Iterator[tuple[str, str]]:
    for entry in read_dictd(index):
        yield foldoc_text(entry)


def read_jargon(index: Path) -> Iterator[str]:
    return (jargon_text(entry) for entry in read_dictd(index))


def read_wordnet(index: Path) -> Iterator[str]:
    return (wordnet_text(entry) for entry in read_dictd(index))


def read_elements(index: Path) -> Iterator[str]:
    return (elements_text(entry) for entry in read_dictd(index))
