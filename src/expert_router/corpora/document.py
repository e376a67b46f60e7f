"""A document of a corpus: its text, and where known its topic label and source."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    text: str
    label: str | None = None
    source: str | None = None
