"""Text preprocessing of c-BTM's classifier: lower-case, number substitution, stop-word removal.

c-BTM (Gururangan et al. 2023, `train_classifier.py`) tokenizes with scikit-learn's default word
pattern, maps every token whose first character is a digit to one placeholder token and then drops
English stop-words together with that placeholder. Numbers therefore never reach the vocabulary; they
are substituted so that the stop-word filter can drop all of them with one entry.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

NUMBER_TOKEN = "#number"
"""Placeholder for tokens that start with a digit (lower-case: it stands after lower-casing)."""


@functools.cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop-word list plus the number placeholder. Read on first use: importing
    scikit-learn takes about a second, and routing (the gateway, every CLI start) never needs it."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS | {NUMBER_TOKEN})


TOKEN_PATTERN = r"(?u)\b\w\w+\b"
"""scikit-learn's default token pattern: words of two or more word characters."""

_TOKEN_RE = re.compile(TOKEN_PATTERN)


def substitute_numbers(tokens: Iterable[str]) -> Iterator[str]:
    """Replace every token that starts with a digit by `NUMBER_TOKEN`."""
    return (NUMBER_TOKEN if token[0].isdigit() else token for token in tokens)


def tokenize(text: str) -> list[str]:
    """Lower-case, split into word tokens and substitute numbers (stop-words still present)."""
    return list(substitute_numbers(_TOKEN_RE.findall(text.lower())))


def content_tokens(text: str) -> list[str]:
    """The tokens that can enter the TF-IDF vocabulary: `tokenize` minus stop-words and numbers."""
    stop = stop_words()
    return [token for token in tokenize(text) if token not in stop]


def raw_word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens without substitution or filtering.

    Routing uses this: a token outside the fitted vocabulary (stop-words and number placeholders never
    enter it) contributes nothing, so looking raw tokens up in the vocabulary gives exactly the
    features that the full preprocessing would.
    """
    return _TOKEN_RE.findall(text.lower())


# bytes.translate table for ASCII text: word characters ([A-Za-z0-9_]) stay, everything else becomes a
# space, so that split() yields the maximal runs of word characters.
_ASCII_WORD_TABLE = bytes(b if b < 128 and (chr(b).isalnum() or b == ord("_")) else ord(" ") for b in range(256))


def ascii_word_tokens(text: str) -> list[bytes]:
    """`raw_word_tokens` for ASCII text, as bytes, several times faster than the regular expression.

    Runs of word characters are the same; one-character runs are kept (the regex drops them), which
    changes nothing for routing because no one-character term is ever in the vocabulary.
    """
    return text.encode("ascii").lower().translate(_ASCII_WORD_TABLE).split()


def make_vectorizer(max_features: int | None = None, min_df: int | float = 1) -> TfidfVectorizer:
    """The c-BTM TF-IDF vectorizer: default scikit-learn settings, numbers substituted, stop-words out.

    The whole preprocessing is one public `tokenizer` (`content_tokens`): lower-case, scikit-learn's
    token pattern, numbers to the placeholder, stop-words (and the placeholder) removed. That is what
    scikit-learn's own lowercase -> token_pattern -> stop_words chain computes, plus the substitution,
    without overriding any of its private checks.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        tokenizer=content_tokens,
        token_pattern=None,
        lowercase=False,
        stop_words=None,
        max_features=max_features,
        min_df=min_df,
        dtype=np.float32,
    )
