"""Small text clean-ups shared by the corpus readers."""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,;:!?](?:\s|$))")
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


def squash(text: str) -> str:
    """One line: every run of white space becomes one space, none before punctuation (left by removed markup)."""
    return _SPACE_BEFORE_PUNCTUATION.sub("", _SPACE.sub(" ", text)).strip()


def clip(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars`, at the last sentence end when there is one in the second half."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in _SENTENCE_END.finditer(head + " ")]
    cut = ends[-1] if ends and ends[-1] > max_chars // 2 else max_chars
    return head[:cut].strip()
